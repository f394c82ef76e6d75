"""Train the head on cached backbone features while the whole backbone is frozen; images again at the unfreeze.

Written here rather than taken from Lightning, which has no frozen-phase feature cache.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.features import FeatureDataset, collate_features, extract_features
from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)


class FrozenFeatureCache(Callback):
    """Train the head on cached backbone features while the whole backbone is frozen; images again at the unfreeze.

    While no backbone group trains (before `schedule`'s first milestone, or throughout with ``{}``) and
    BatchNorm statistics are fixed, the backbone is a constant function: one pass per image gives what every
    frozen epoch would compute. At fit setup (before Lightning first asks for the training loader, on the
    device the run trains on) this callback extracts the training features (through the
    *training* transform) and the validation features, and hands the datamodule loaders of those until the
    first unfreeze; the module sees `Features` batches and runs only its head. From the unfreeze on, the
    datamodule's own image loaders return. Loaders are re-requested every epoch (the trainer's
    `reload_dataloaders_every_n_epochs` is set to 1) so the switch happens at the right epoch, on resume too.
    Both changes (the datamodule's `loader_override`, the trainer's reload setting) are undone when fitting ends
    (`teardown`) or fails (`on_exception`), so a later `trainer.validate` or a retried fit sees the images.

    Args:
        schedule: the run's finetuning callback, whose milestones say how long the backbone stays frozen.
        views: augmented views to cache per training image, when the training transform is random; epoch `e`
            trains on view `e mod views`. ``None`` refuses a random transform (caching would fix one augmented
            view per image, a different recipe); with a deterministic transform one view is exact.

    >>> FrozenFeatureCache(LayerFinetuning(milestones={5: "all"}), views=2).views
    2
    """

    def __init__(self, schedule: LayerFinetuning | None = None, views: int | None = None) -> None:
        if views is not None and views < 1:
            raise BadValue(f"views must be a positive number of augmented views per image, got {views}.")
        self.schedule = schedule
        self.views = views
        self.frozen_epochs = 0
        self.train_views: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.val: tuple[torch.Tensor, torch.Tensor] | None = None
        self.extract_seconds = 0.0
        self._trainer: pl.Trainer | None = None
        self._reload: int = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        schedule = self.schedule
        if schedule is None:
            raise BadValue(
                "FrozenFeatureCache needs the run's LayerFinetuning callback as its schedule: it caches only while "
                "that keeps the whole backbone frozen (FrozenFeatureCache(schedule=finetuning))."
            )
        self.frozen_epochs = schedule.frozen_epochs(trainer.max_epochs)
        if self.frozen_epochs <= trainer.current_epoch:
            log.info("FrozenFeatureCache: no frozen epoch left (the backbone trains from %d).", self.frozen_epochs)
            return
        _check_cacheable(trainer, pl_module, schedule)
        datamodule = trainer.datamodule
        started = time.perf_counter()
        train_set = datamodule.train_dataloader().dataset
        deterministic = _deterministic(train_set)
        if not deterministic and self.views is None:
            raise BadValue(
                "The training transform is random (augmentation), so cached features would fix one augmented view "
                "per image. Set callbacks.feature_cache.views=K to cache K views (epoch e uses view e mod K), or "
                "train without augmentation (augment=none)."
            )
        views = 1 if deterministic else int(self.views)
        loader = datamodule.make_loader(train_set, train=False, distributed=False)  # in order, all images, per view
        pl_module.to(trainer.strategy.root_device)  # where the strategy would put it next anyway
        # In the trainer's precision (its autocast), as the frozen phase without the cache would run the backbone;
        # augmented views draw from their own random stream, not training's.
        with trainer.precision_plugin.forward_context(), torch.random.fork_rng(devices=[]):
            self.train_views = [extract_features(pl_module.backbone, loader) for _ in range(views)]
            self.val = extract_features(pl_module.backbone, datamodule.eval_dataloader("val"))
        self.extract_seconds = time.perf_counter() - started
        log.info(
            "FrozenFeatureCache: %d view(s) of %d training images and %d validation images in %.1f s; the head "
            "trains on them for %d epoch(s).",
            views,
            len(train_set),
            len(self.val[1]),
            self.extract_seconds,
            self.frozen_epochs - trainer.current_epoch,
        )
        self._trainer, self._reload = trainer, trainer.reload_dataloaders_every_n_epochs
        trainer.reload_dataloaders_every_n_epochs = 1
        datamodule.loader_override = self.loader

    def loader(self, split: str) -> DataLoader | None:
        """The features loader for `split` in a frozen epoch; None (the images) otherwise."""
        trainer = self._trainer
        if trainer is None or trainer.current_epoch >= self.frozen_epochs or split not in ("train", "val"):
            return None
        make = trainer.datamodule.make_loader
        if split == "val":
            return make(FeatureDataset(*self.val), train=False, collate_fn=collate_features)
        features, labels = self.train_views[trainer.current_epoch % len(self.train_views)]
        return make(FeatureDataset(features, labels), train=True, collate_fn=collate_features)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        """Hand the datamodule its image loaders and the trainer its reload setting back; drop the features."""
        if self._trainer is not None:
            self._trainer.datamodule.loader_override = None
            self._trainer.reload_dataloaders_every_n_epochs = self._reload
        self._trainer, self.train_views, self.val = None, [], None


def _check_cacheable(trainer: pl.Trainer, pl_module: pl.LightningModule, schedule: Any) -> None:
    if schedule.train_bn:
        raise BadValue(
            "FrozenFeatureCache needs a constant backbone, but finetuning.train_bn=true trains BatchNorm "
            "in frozen groups: set it to false, or drop the feature cache."
        )
    if getattr(pl_module, "mixup", None) is not None or getattr(pl_module, "teacher", None) is not None:
        raise BadValue(
            "FrozenFeatureCache cannot be combined with Mixup/CutMix or distillation: both need "
            "images in every step. Turn one of them off."
        )
    if not isinstance(trainer.datamodule, ImageFolderDataModule):
        raise BadValue(
            f"FrozenFeatureCache serves features through an ImageFolderDataModule (or a subclass); "
            f"got {type(trainer.datamodule).__name__}."
        )


def _deterministic(dataset: Any, draws: int = 4) -> bool:
    """Whether the dataset's transform gives its first image the same tensor under `draws` different seeds."""
    with torch.random.fork_rng(devices=[]):
        outputs = []
        for seed in range(draws):
            torch.manual_seed(seed)
            outputs.append(dataset[0][0])
    return all(torch.equal(outputs[0], other) for other in outputs[1:])
