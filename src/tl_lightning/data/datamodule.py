"""An ImageFolder LightningDataModule with one class map for every split, checked before training starts.

`root` holds either `train/` (plus optional `val/` and `test/`) with one folder per class, or the class
folders directly, which are then split per class, seeded. Hidden folders and files (`.ipynb_checkpoints`)
are ignored. Class indices are the sorted training class names, so a split that lacks a class cannot shift
the others (timm #957): it is an error instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tl_lightning.data.audit import AuditReport, FileCheck, build_report, check_files
from tl_lightning.data.distributed import auto_num_workers, eval_sampler, per_device_batch_size, world
from tl_lightning.data.download import Archive, fetch_archive
from tl_lightning.data.drift import InputStatistics
from tl_lightning.data.images import ImageDataset, load_image, short_sides
from tl_lightning.data.sampling import EpochSampler
from tl_lightning.data.splits import (
    check_no_empty_class,
    check_same_class_folders,
    list_class_folders,
    stratified_split,
)
from tl_lightning.data.transforms import DataConfig, eval_transform, train_transform
from tl_lightning.utils import BadValue, NotFound, write_csv

log = logging.getLogger(__name__)

Samples = list[tuple[Path, int]]
SPLITS = ("train", "val", "test")


class ImageFolderDataModule(pl.LightningDataModule):
    """Train/val/test dataloaders over an image folder, with transforms from the backbone's data config.

    Args:
        root: the data folder (see module docstring); `None` with an `archive` uses the archive's folder under
            `cache_dir`, downloaded and extracted by `prepare_data` on first use.
        archive: a published zip of the image folder (`download.Archive`, or its fields as a mapping).
        cache_dir: where archives are downloaded and extracted.
        batch_size: the global batch size: each of N devices gets `batch_size / N` (an error if that is not whole),
            so a recipe means the same on one device or eight.
        num_workers: loader worker processes per device; `None` chooses at `setup`: the CPUs this process may use,
            shared between devices, one left for the training process, at most 8 (`auto_num_workers`).
        pin_memory: page-locked batches for faster host-to-GPU copies; `None` turns it on when training on CUDA.
        persistent_workers: keep worker processes between epochs (when there are any).
        val_fraction: share of each class held out for validation when there is no `val/` folder.
        test_fraction: share of each class held out for test when `root` holds class folders directly.
        seed: seed of those splits.
        audit: decode and hash every file once before training (see `tl_lightning.data.audit`); the report is
            `audit_report`.
        audit_cache: a folder to keep each file's audit result in, by path, size and modification time, so later
            runs decode only new or changed files.
        on_bad_image: ``"skip"`` unreadable files (counted in the report) or ``"raise"`` an error listing them.
        balanced_sampling: draw training batches with a `WeightedRandomSampler` (with replacement) so every class
            is seen equally often; an epoch stays the size of the training split.
        train_transform: called with the data config to build the training pipeline.
        eval_transform: called with the data config to build the deterministic validation / test pipeline.
        data_config: the model's preprocessing (`TransferClassifier.data_config`: input size, mean, std, ...). It
            may be set later, as the attribute, since the class count that builds the model comes from here.

    >>> dm = ImageFolderDataModule("data/plants", batch_size=64)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path | None = None,
        archive: Archive | Mapping[str, Any] | None = None,
        cache_dir: str | Path = "~/.cache/tl_lightning",
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        audit: bool = True,
        audit_cache: str | Path | None = None,
        on_bad_image: str = "skip",
        balanced_sampling: bool = False,
        train_transform: Callable[[dict[str, Any]], Any] = train_transform,
        eval_transform: Callable[[dict[str, Any]], Any] = eval_transform,
        data_config: DataConfig | None = None,
    ) -> None:
        super().__init__()
        if root is None and archive is None:
            raise BadValue("ImageFolderDataModule needs data.root (a folder of class folders) or an archive.")
        # An explicit root wins over the archive: a local copy is never downloaded again.
        self.archive = Archive.of(archive) if root is None and archive is not None else None
        self.cache_dir = cache_dir
        self.root = Path(root).expanduser() if root is not None else self.archive.target(cache_dir)
        self.batch_size = batch_size
        self.batch_size_per_device = batch_size
        self._resume_at: tuple[int, int] | None = None  # (epoch, samples consumed) of a mid-epoch checkpoint
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        # What the loaders use: the settings above, with `None` resolved for the trainer's hardware at `setup`.
        self.loader_workers = num_workers if num_workers is not None else auto_num_workers(1)
        self.pin_batches = bool(pin_memory)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        if on_bad_image not in ("skip", "raise"):
            raise BadValue(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}.")
        self.audit = audit
        self.audit_cache = audit_cache
        self.on_bad_image = on_bad_image
        self.audit_report: AuditReport | None = None
        self.balanced_sampling = balanced_sampling
        self.build_train_transform = train_transform
        self.build_eval_transform = eval_transform
        self.data_config = data_config
        # The one seam `FrozenFeatureCache` uses, and restores when fitting ends or fails: split -> a loader of
        # cached features, or None for the images.
        self.loader_override: Callable[[str], DataLoader | None] | None = None
        self._splits: dict[str, dict[str, list[Path]]] | None = None

    def prepare_data(self) -> None:
        """Download and extract the archive when there is one and it is not extracted yet (once, under a lock)."""
        if self.archive is not None and not self.root.is_dir():
            fetch_archive(self.archive, self.cache_dir)

    @property
    def splits(self) -> dict[str, dict[str, list[Path]]]:
        """`{split: {class: files}}`, scanned and checked once."""
        if self._splits is None:
            self._splits = self._scan()
        return self._splits

    @property
    def class_names(self) -> list[str]:
        return sorted(self.splits["train"])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _scan(self) -> dict[str, dict[str, list[Path]]]:
        if self.root.is_file():
            raise BadValue(
                f"data.root '{self.root}' is a file. Point data.root at the folder that holds the class "
                "folders (or train/ [val/] [test/] folders of class folders)."
            )
        if not self.root.is_dir():
            raise NotFound(
                f"data.root '{self.root}' does not exist. Point data.root at your image folder "
                "(class folders, or train/ [val/] [test/] folders of class folders)."
            )
        ignored: list[str] = []
        has_splits = (self.root / "train").is_dir()
        folders = {s: self.root / s for s in SPLITS if (self.root / s).is_dir()} if has_splits else {"all": self.root}
        found = {split: list_class_folders(folder, ignored) for split, folder in folders.items()}
        files = [p for c in found.values() for ps in c.values() for p in ps]
        checks = check_files(files, cache=self.audit_cache) if self.audit else {}
        found = self._without_bad_files(found, checks)
        for split, classes in found.items():
            check_no_empty_class(classes, folders[split])
        splits = self._split(found)
        self.audit_report = build_report(self.root, splits, checks, ignored)
        return splits

    def _without_bad_files(
        self, found: dict[str, dict[str, list[Path]]], checks: dict[Path, FileCheck]
    ) -> dict[str, dict[str, list[Path]]]:
        bad = {path: check.problem for path, check in checks.items() if check.problem}
        if bad and self.on_bad_image == "raise":
            listed = "; ".join(f"{path}: {problem}" for path, problem in sorted(bad.items())[:10])
            raise BadValue(
                f"{len(bad)} files cannot be read as images ({listed}). Remove or replace them, or set "
                "data.on_bad_image=skip to train without them."
            )
        return {s: {c: [p for p in ps if p not in bad] for c, ps in classes.items()} for s, classes in found.items()}

    def _split(self, found: dict[str, dict[str, list[Path]]]) -> dict[str, dict[str, list[Path]]]:
        if "all" in found:
            return stratified_split(found["all"], {"val": self.val_fraction, "test": self.test_fraction}, self.seed)
        splits = dict(found)
        for split in ("val", "test"):
            if split in splits:
                check_same_class_folders(list(splits["train"]), list(splits[split]), split, self.root / split)
        if "val" not in splits:
            held = stratified_split(splits["train"], {"val": self.val_fraction}, self.seed)
            splits["train"], splits["val"] = held["train"], held["val"]
        return splits

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class in class-index order."""
        return [len(self.splits[split].get(name, [])) for name in self.class_names]

    def samples(self, split: str) -> Samples:
        index = {name: i for i, name in enumerate(self.class_names)}
        return [(path, index[name]) for name, paths in sorted(self.splits[split].items()) for path in paths]

    def short_sides(self, max_images: int = 256) -> list[int]:
        """The shorter side of up to `max_images` training images, for the recipe's resolution and crops."""
        return short_sides([path for path, _ in self.samples("train")], max_images)

    def read_image(self, path: Path, channels: int) -> np.ndarray:
        """A split's image as decoded for the model, for the report's top-loss grid."""
        return load_image(path, channels)

    @property
    def has_test(self) -> bool:
        return "test" in self.splits and any(self.splits["test"].values())

    def save_split(self, path: str | Path) -> Path:
        """Write every file's split and class to a CSV, so a run's data can be audited and reproduced."""
        rows = [[split, self.class_names[label], file] for split in self.splits for file, label in self.samples(split)]
        return write_csv(path, [["split", "class", "path"], *rows])

    def setup(self, stage: str | None = None) -> None:
        model = self.trainer.lightning_module if self.trainer is not None else None
        if self.data_config is None and hasattr(model, "connect_data"):  # a plain `trainer.fit(model, datamodule)`
            model.connect_data(self)
        if self.data_config is None:
            raise BadValue(
                "ImageFolderDataModule has no preprocessing: pass data_config=model.data_config when creating it, "
                "or set datamodule.data_config = model.data_config before fitting."
            )
        devices = world(self.trainer)[0]
        self.batch_size_per_device = per_device_batch_size(self.batch_size, devices)
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        self.loader_workers, self.pin_batches = self.loader_settings(devices, on_cuda)
        _ = self.splits

    def loader_settings(self, devices: int, on_cuda: bool) -> tuple[int, bool]:
        """Worker processes per device and pinned memory for this hardware: the given values, or the automatic ones."""
        workers = self.num_workers if self.num_workers is not None else auto_num_workers(devices)
        return workers, on_cuda if self.pin_memory is None else self.pin_memory

    def input_statistics(self, max_images: int = 256) -> InputStatistics:
        """Statistics of up to `max_images` training images (evenly spaced), preprocessed as for evaluation.

        Stored in checkpoints, so prediction can warn about inputs unlike these (`drift.py`).
        """
        return InputStatistics.of(self.eval_sample(max_images))

    def eval_sample(self, max_images: int = 256) -> torch.Tensor:
        """Up to `max_images` training images, evenly spaced, preprocessed as for evaluation, as one batch."""
        dataset = self.dataset("train", train=False)
        step = max(1, len(dataset) // max_images)
        with torch.random.fork_rng(devices=[]):  # the eval transform still draws a seed: leave training's RNG be
            return torch.stack([dataset[i][0] for i in range(0, len(dataset), step)[:max_images]])

    def dataset(self, split: str, train: bool, data_config: DataConfig | None = None) -> ImageDataset:
        """A split's images with the training or the evaluation transform, for this datamodule's preprocessing or
        for `data_config` (the recipe measures the images at other resolutions before the model exists)."""
        config = data_config or self.data_config
        build = self.build_train_transform if train else self.build_eval_transform
        return ImageDataset(self.samples(split), build(config), int(config["input_size"][0]))

    def _loader(self, split: str, train: bool, distributed: bool = True) -> DataLoader:
        if split not in self.splits:
            raise BadValue(f"'{self.root}' has no '{split}' split.")
        return self.make_loader(self.dataset(split, train), train, distributed)

    def make_loader(
        self, dataset: Dataset, train: bool, distributed: bool = True, collate_fn: Callable | None = None
    ) -> DataLoader:
        """This datamodule's batching for `dataset`: shuffled (or class-balanced) and dropping a ragged last
        batch when `train`, in order otherwise. Used for image datasets and for cached features alike; datasets
        other than `ImageDataset` are in memory and load in the main process.

        Under DDP, training loaders get Lightning's `DistributedSampler`; evaluation loaders get a share of the
        split without repeats (`distributed.eval_sampler`) unless `distributed=False` asks for the whole split.
        """
        if train:
            sampler = self._train_sampler(dataset, distributed)
        else:
            sampler = eval_sampler(dataset, *world(self.trainer)) if distributed else None
        in_memory = not isinstance(dataset, ImageDataset)  # worker processes would only add start-up time
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            sampler=sampler,
            generator=torch.Generator(),  # workers' base seed: not a draw from training's RNG (a resume restores it)
            drop_last=train and len(dataset) > self.batch_size_per_device,
            num_workers=0 if in_memory else self.loader_workers,
            pin_memory=self.pin_batches,
            persistent_workers=self.persistent_workers and not in_memory and self.loader_workers > 0,
            collate_fn=collate_fn,
        )

    def _train_sampler(self, dataset: Dataset, distributed: bool) -> EpochSampler:
        """The training order: its seed from the run's (`seed_everything`, on every rank), its epoch the trainer's,
        and once after a mid-epoch resume, where the stopped run was (`load_state_dict`)."""
        size, rank = world(self.trainer) if distributed else (1, 0)
        counts = self.class_counts()
        weights = [1.0 / counts[label] for label in _labels(dataset)] if self.balanced_sampling else None
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # what Lightning's own DistributedSampler uses
        start_at, self._resume_at = self._resume_at, None
        sampler = EpochSampler(dataset, seed, size, rank, weights, isinstance(dataset, ImageDataset), start_at)
        sampler.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Where training is in its epoch (`(epoch, samples this rank consumed)`), so a checkpoint saved mid-epoch
        resumes on the next sample; Lightning stores this in every checkpoint."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"position": [trainer.current_epoch, done * self.batch_size_per_device]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if position := state_dict.get("position"):
            self._resume_at = (int(position[0]), int(position[1]))

    def train_dataloader(self) -> DataLoader:
        override = self._overridden("train")
        return override if override is not None else self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        override = self._overridden("val")
        return override if override is not None else self._loader("val", train=False)

    def _overridden(self, split: str) -> DataLoader | None:
        return self.loader_override(split) if self.loader_override is not None else None

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """All of a split, in order, with the deterministic eval preprocessing, on every rank: for features,
        calibration, probes and reports, which run outside the trainer's loops."""
        return self._loader(split, train=False, distributed=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test" if self.has_test else "val", train=False)


def _labels(dataset: Dataset) -> list[int]:
    if isinstance(dataset, ImageDataset):
        return [label for _, label in dataset.samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]
