"""Frozen-backbone features: extracted once per image, for the linear probe and for the frozen training phase.

A frozen backbone maps an image, preprocessed deterministically, to the same vector every epoch, so the linear
probe (and the head on a frozen backbone) need one backbone pass per image, not one per epoch. The key hashes
the backbone's name, its weights' provenance (SHA-256 or source), the preprocessing, and every file's path,
label, size and modification time: change any of them and the features are extracted again.
`FrozenFeatureCache` does the same in memory for training: the head trains on features while the backbone is
frozen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)

Samples = Sequence[tuple[Path, int]]


@torch.no_grad()  # not inference_mode: calibration fits a temperature on these outputs with autograd
def extract_features(backbone: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (a backbone's pooled features, a classifier's logits) and labels of every batch of `loader`, in
    order, with every module in eval mode (BN statistics fixed) and each module's mode restored afterwards."""
    modes = [m.training for m in backbone.modules()]  # restored module by module: BatchNorm policies survive
    backbone.eval()
    device = next(backbone.parameters()).device
    features, labels = [], []
    for x, y in loader:
        features.append(backbone(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    for module, training in zip(backbone.modules(), modes, strict=True):
        module.training = training
    return torch.cat(features), torch.cat(labels)


def cache_key(
    backbone: str, weights: Mapping[str, Any], data_config: Mapping[str, Any], splits: Mapping[str, Samples]
) -> str:
    """A hex digest of everything the features depend on (see the module docstring)."""
    files = {split: [[str(path), label, *_stat(path)] for path, label in samples] for split, samples in splits.items()}
    provenance = {k: weights.get(k) for k in ("source", "sha256", "file", "tag") if weights.get(k) is not None}
    payload = {"backbone": backbone, "weights": provenance, "data_config": dict(data_config), "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _stat(path: Path) -> tuple[int, int]:
    info = Path(path).stat()
    return info.st_size, info.st_mtime_ns


class FeatureCache:
    """Feature tensors per split in `folder/<key>.pt`, written through a temp file renamed into place."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return {split: (value["features"], value["labels"]) for split, value in saved.items()}

    def save(self, key: str, features: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path, tmp = self.path(key), self.path(key).with_suffix(".pt.tmp")
        torch.save({split: {"features": f, "labels": y} for split, (f, y) in features.items()}, tmp)
        os.replace(tmp, path)
        return path


def split_features(
    backbone: nn.Module,
    loaders: Mapping[str, DataLoader],
    key: str,
    cache: FeatureCache | None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """Features per split from `cache` under `key`, or extracted (and cached); also whether the cache had them."""
    if cache is not None and (found := cache.load(key)) is not None and set(found) >= set(loaders):
        log.info("Features from the cache: %s", cache.path(key))
        return {split: found[split] for split in loaders}, True
    features = {split: extract_features(backbone, loader) for split, loader in loaders.items()}
    if cache is not None:
        log.info("Features cached in %s", cache.save(key, features))
    return features, False


class FrozenFeatureCache(Callback):
    """Train the head on cached backbone features while the whole backbone is frozen; images again at the unfreeze.

    While no backbone group trains (before `LayerFinetuning`'s first milestone, or throughout with ``{}``) and
    BatchNorm statistics are fixed, the backbone is a constant function: one pass per image gives what every
    frozen epoch would compute. At fit setup (before Lightning first asks for the training loader, on the
    device the run trains on) this callback extracts the training features (through the
    *training* transform) and the validation features, and hands the datamodule loaders of those until the
    first unfreeze; the module sees `(N, D)` batches and runs only its head. From the unfreeze on, the
    datamodule's own image loaders return. Loaders are re-requested every epoch (the trainer's
    `reload_dataloaders_every_n_epochs` is set to 1) so the switch happens at the right epoch, on resume too.

    Args:
        views: augmented views to cache per training image, when the training transform is random; epoch `e`
            trains on view `e mod views`. ``None`` refuses a random transform (caching would fix one augmented
            view per image, a different recipe); with a deterministic transform one view is exact.

    Written here rather than taken from Lightning, which has no frozen-phase feature cache.
    """

    def __init__(self, views: int | None = None) -> None:
        if views is not None and views < 1:
            raise ValueError(f"views must be a positive number of augmented views per image, got {views}.")
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
        from tl_lightning.finetuning import LayerFinetuning

        schedules = [c for c in trainer.callbacks if isinstance(c, LayerFinetuning)]
        if not schedules:
            raise ValueError("FrozenFeatureCache needs a LayerFinetuning callback: it caches only while that keeps "
                             "the whole backbone frozen.")  # fmt: skip
        schedule = schedules[0]
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
            raise ValueError(
                "The training transform is random (augmentation), so cached features would fix one augmented view "
                "per image. Set callbacks.feature_cache.views=K to cache K views (epoch e uses view e mod K), or "
                "train without augmentation (augment=none)."
            )
        views = 1 if deterministic else int(self.views)
        loader = datamodule.make_loader(train_set, train=False, distributed=False)  # in order, all images, per view
        pl_module.to(trainer.strategy.root_device)  # where the strategy would put it next anyway
        with torch.random.fork_rng(devices=[]):  # augmented views draw from their own stream, not training's
            self.train_views = [extract_features(pl_module.backbone, loader) for _ in range(views)]
        self.val = extract_features(pl_module.backbone, datamodule.eval_dataloader("val"))
        self.extract_seconds = time.perf_counter() - started
        log.info("FrozenFeatureCache: %d view(s) of %d training images and %d validation images in %.1f s; the head "
                 "trains on them for %d epoch(s).", views, len(train_set), len(self.val[1]), self.extract_seconds,
                 self.frozen_epochs - trainer.current_epoch)  # fmt: skip
        self._trainer, self._reload = trainer, trainer.reload_dataloaders_every_n_epochs
        trainer.reload_dataloaders_every_n_epochs = 1
        datamodule.loader_override = self.loader

    def loader(self, split: str) -> DataLoader | None:
        """The features loader for `split` in a frozen epoch; None (the images) otherwise."""
        trainer = self._trainer
        if trainer is None or trainer.current_epoch >= self.frozen_epochs or split not in ("train", "val"):
            return None
        if split == "val":
            return trainer.datamodule.make_loader(TensorDataset(*self.val), train=False)
        features, labels = self.train_views[trainer.current_epoch % len(self.train_views)]
        return trainer.datamodule.make_loader(TensorDataset(features, labels), train=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trainer is not None:
            trainer.datamodule.loader_override = None
            trainer.reload_dataloaders_every_n_epochs = self._reload
        self._trainer, self.train_views, self.val = None, [], None


def _check_cacheable(trainer: pl.Trainer, pl_module: pl.LightningModule, schedule: Any) -> None:
    if schedule.train_bn:
        raise ValueError("FrozenFeatureCache needs a constant backbone, but finetuning.train_bn=true trains BatchNorm "
                         "in frozen groups: set it to false, or drop the feature cache.")  # fmt: skip
    if getattr(pl_module, "mixup", None) is not None or getattr(pl_module, "_teacher", None):
        raise ValueError("FrozenFeatureCache cannot be combined with Mixup/CutMix or distillation: both need "
                         "images in every step. Turn one of them off.")  # fmt: skip
    if not hasattr(trainer.datamodule, "loader_override"):
        raise ValueError(f"FrozenFeatureCache needs a datamodule with loader_override/make_loader "
                         f"(ImageFolderDataModule); got {type(trainer.datamodule).__name__}.")  # fmt: skip


def _deterministic(dataset: Any, draws: int = 4) -> bool:
    """Whether the dataset's transform gives its first image the same tensor under `draws` different seeds."""
    with torch.random.fork_rng(devices=[]):
        outputs = []
        for seed in range(draws):
            torch.manual_seed(seed)
            outputs.append(dataset[0][0])
    return all(torch.equal(outputs[0], other) for other in outputs[1:])
