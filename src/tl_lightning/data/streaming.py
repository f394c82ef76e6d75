"""Image folders beyond one disk: LitData chunks written once (`optimize_folder`), streamed to every rank and node
(`StreamingDataModule`), locally or from object storage (`s3://`, `gs://`).

`optimize_folder` writes the audited folder (bad files left out) split by split, in the datamodule's sample order,
each sample as the file's own bytes (no re-encoding: the same pixels, and decoded by `decode_image` exactly as a
file is), its class index and its name. Beside the chunks, `tl_lightning.json` keeps the class names, every
split's sample names, and the short sides the recipe sizes its input from, so a streaming run makes the same
automatic choices as a run on the folder.

`StreamingDataModule` is an `ImageFolderDataModule` whose images come from the chunks: the same transforms, splits,
recipe and report. Training reads through LitData's `StreamingDataset` and `StreamingDataLoader`, which shuffle
chunks and samples across ranks and nodes (each rank its own part) and carry their position in the checkpoint,
so a run resumes mid-epoch. Evaluation reads the chunks in order by index.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import litdata
import numpy as np
from litdata import StreamingDataLoader, StreamingDataset
from torch.utils.data import DataLoader

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.distributed import per_device_batch_size, world
from tl_lightning.data.images import ImageDataset, decode_image
from tl_lightning.data.transforms import DataConfig
from tl_lightning.utils import BadValue, NotFound

METADATA = "tl_lightning.json"


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _sample(item: tuple[str, int, str]) -> dict[str, Any]:
    """One LitData sample (runs in LitData's worker processes, so a module-level function)."""
    path, label, name = item
    return {"image": Path(path).read_bytes(), "label": label, "name": name}


def optimize_folder(
    datamodule: ImageFolderDataModule, out: str, chunk_bytes: str = "64MB", num_workers: int = 1
) -> dict[str, int]:
    """Write `datamodule`'s splits (scanned and audited) as LitData chunks under `out/<split>/`; returns the
    number of samples per split. `out` is a folder or an `s3://` / `gs://` URL."""
    out = out.rstrip("/")
    root = Path(datamodule.root)
    metadata: dict[str, Any] = {"class_names": datamodule.class_names, "root": str(root), "splits": {}}
    for split in datamodule.splits:
        samples = datamodule.samples(split)
        names = [_name(path, root) for path, _ in samples]
        litdata.optimize(
            fn=_sample,
            inputs=[(str(path), label, name) for (path, label), name in zip(samples, names, strict=True)],
            output_dir=f"{out}/{split}",
            chunk_bytes=chunk_bytes,
            num_workers=num_workers,
            reorder_files=False,  # the chunks keep the datamodule's order: evaluation index i is samples[i]
            keep_data_ordered=True,
            mode="overwrite",
            verbose=False,
            # LitData spawns its writers by default: each re-imports torch and Lightning, seconds each time; the
            # writers only read files, which forking (Linux only: macOS forbids it with threads) does safely.
            start_method="fork" if sys.platform == "linux" else None,
        )
        metadata["splits"][split] = [[name, label] for name, (_, label) in zip(names, samples, strict=True)]
    metadata["train_short_sides"] = datamodule.short_sides()
    _write_metadata(out, metadata)
    return {split: len(rows) for split, rows in metadata["splits"].items()}


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _write_metadata(out: str, metadata: dict[str, Any]) -> None:
    text = json.dumps(metadata)
    if not _is_remote(out):
        Path(out, METADATA).write_text(text)
        return
    from litdata.streaming.fs_provider import _get_fs_provider  # LitData's own S3 / GCS client

    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch, METADATA)
        local.write_text(text)
        _get_fs_provider(out).upload_file(str(local), f"{out}/{METADATA}")


def read_metadata(input_dir: str) -> dict[str, Any]:
    """`tl_lightning.json` of an optimized dataset, local or remote."""
    where = f"{input_dir.rstrip('/')}/{METADATA}"
    try:
        if not _is_remote(input_dir):
            return json.loads(Path(where).read_text())
        from litdata.streaming.fs_provider import _get_fs_provider

        with tempfile.TemporaryDirectory() as scratch:
            _get_fs_provider(input_dir).download_file(where, str(Path(scratch, METADATA)))
            return json.loads(Path(scratch, METADATA).read_text())
    except (OSError, ValueError) as err:
        raise NotFound(
            f"data.input_dir '{input_dir}' has no readable {METADATA} ({err}). Write it with "
            f"`python -m tl_lightning optimize IMAGE_FOLDER {input_dir}`."
        ) from None


class _TrainStream(StreamingDataset):
    """LitData's dataset, decoding and augmenting each training sample with a seed drawn from (run seed, epoch,
    sample name): a resumed epoch augments every sample as the stopped run would have. (Reseeding from torch's RNG,
    as `ImageDataset` does without a sampler's seed, gave a resumed run other augmentations: measured.)"""

    def __init__(self, input_dir: str, augment: Any, channels: int, **kwargs: Any) -> None:
        super().__init__(input_dir, **kwargs)
        self.augment, self.channels = augment, channels

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        if hasattr(self.augment, "set_random_seed"):
            key = [self.seed, self.current_epoch, zlib.crc32(item["name"].encode())]
            self.augment.set_random_seed(int(np.random.SeedSequence(key).generate_state(1)[0] >> 1))
        image = decode_image(item["image"], item["name"], self.channels)
        return self.augment(image=image)["image"], int(item["label"])


class StreamedImages(ImageDataset):
    """A split of the chunks as an `ImageDataset` (index i is `samples[i]`), for in-order evaluation."""

    def __init__(self, stream: Any, samples: list[tuple[Path, int]], transform: Any, channels: int) -> None:
        super().__init__(samples, transform, channels)
        self.stream = stream

    def read(self, index: int) -> np.ndarray:
        item = self.stream[index]
        return decode_image(item["image"], item["name"], self.channels)


class _TrainLoader(StreamingDataLoader):
    """LitData's loader, restored only by the datamodule, before its first epoch starts.

    Lightning restores a stateful loader too, but after it has started the epoch's iterator: LitData reads the state
    when an epoch starts, so the resumed epoch began again from its first sample (measured). Lightning's call is
    therefore ignored. And LitData forgets a restored state only when an epoch is iterated to its end, which
    Lightning, counting batches, never asks for: the epoch after the resumed one replayed the spent state and
    yielded nothing (measured). So the state is used for one epoch, then dropped here.
    """

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        pass

    def resume_from(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)

    def __iter__(self) -> Any:
        if getattr(self, "_resumed", False):
            self.restore = False  # the resumed epoch has been iterated
        self._resumed = self.restore
        return super().__iter__()


class StreamingDataModule(ImageFolderDataModule):
    """An `ImageFolderDataModule` over LitData chunks written by `python -m tl_lightning optimize`.

    Args:
        input_dir: the optimized folder or URL (`s3://bucket/plants`).
        cache_dir: where LitData keeps downloaded chunks of a remote dataset (its default: a temp folder).
        max_cache_size: how much of the chunks LitData keeps on local disk, e.g. "50GB".
        The other arguments are `ImageFolderDataModule`'s; the split is the one the chunks were written with,
        and class-balanced sampling is not available (LitData draws the order).
    """

    def __init__(
        self,
        input_dir: str,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
        batch_size: int = 32,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("balanced_sampling"):
            raise BadValue("data=streaming draws its order with LitData: balanced_sampling is not available.")
        kwargs |= {"audit": False}  # audited when optimized
        super().__init__(
            input_dir, None, "~/.cache/tl_lightning", batch_size, num_workers, pin_memory, persistent_workers, **kwargs
        )
        self.input_dir = str(input_dir).rstrip("/")
        self.root = self.input_dir  # type: ignore[assignment]  # a URL is not a Path; it only names the data
        self.stream_cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self._metadata: dict[str, Any] | None = None
        self._train_loader: Any = None
        self._loader_state: dict[str, Any] | None = None  # a checkpoint's, for the next training loader
        self._test_index: tuple[Any, dict[Path, int]] | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = read_metadata(self.input_dir)
        return self._metadata

    def prepare_data(self) -> None:
        pass

    def _scan(self) -> dict[str, dict[str, list[Path]]]:
        names = self.metadata["class_names"]
        splits: dict[str, dict[str, list[Path]]] = {}
        for split, rows in self.metadata["splits"].items():
            splits[split] = {name: [] for name in names}
            for sample, label in rows:
                splits[split][names[label]].append(Path(sample))
        return splits

    def short_sides(self, max_images: int = 256) -> list[int]:
        return list(self.metadata.get("train_short_sides", []))[:max_images]

    def _stream(self, split: str, kind: type = StreamingDataset, **options: Any) -> Any:
        cache = {"cache_dir": f"{self.stream_cache_dir}/{split}"} if self.stream_cache_dir else {}
        return kind(f"{self.input_dir}/{split}", max_cache_size=self.max_cache_size, **cache, **options)

    def dataset(self, split: str, train: bool, data_config: DataConfig | None = None) -> StreamedImages:
        config = data_config or self.data_config
        build = self.build_train_transform if train else self.build_eval_transform
        channels = int(config["input_size"][0])
        return StreamedImages(self._stream(split), self.samples(split), build(config), channels)

    def read_image(self, path: Path, channels: int) -> np.ndarray:
        """A test image (the report's), found by name in the chunks."""
        if self._test_index is None:
            split = "test" if self.has_test else "val"
            self._test_index = self._stream(split), {sample: i for i, (sample, _) in enumerate(self.samples(split))}
        stream, index = self._test_index
        item = stream[index[path]]
        return decode_image(item["image"], item["name"], channels)

    def _loader(self, split: str, train: bool, distributed: bool = True) -> DataLoader:
        if split not in self.splits:
            raise BadValue(f"'{self.input_dir}' has no '{split}' split.")
        if not train:
            return self.make_loader(self.dataset(split, train=False), train=False, distributed=distributed)
        channels = int(self.data_config["input_size"][0])
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        augment = self.build_train_transform(self.data_config)
        dataset = self._stream(split, _TrainStream, shuffle=True, seed=seed, augment=augment, channels=channels)
        size = world(self.trainer)[0] if distributed else 1
        batch = per_device_batch_size(self.batch_size, size)
        loader = _TrainLoader(
            dataset,
            batch_size=batch,
            num_workers=self.loader_workers,
            pin_memory=self.pin_batches,
            persistent_workers=self.persistent_workers and self.loader_workers > 0,
            drop_last=len(self.samples(split)) > batch * size,  # as ImageFolderDataModule: a small split keeps all
        )
        if self._loader_state is not None:
            loader.resume_from(self._loader_state)
            self._loader_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (LitData's epoch and samples yielded per worker), so a checkpoint saved
        mid-epoch resumes on the next sample (restored by `_TrainLoader.resume_from`)."""
        trainer = self.trainer
        if self._train_loader is None or trainer is None or trainer.state.fn != "fit":
            return {}
        return {"stream": self._train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("stream")
