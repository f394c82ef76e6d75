"""Checkpoint files: written atomically, and checked before and after loading (the one place that says what is
wrong with one).

Every entry point that takes a checkpoint (prediction, export, Grad-CAM, a distillation teacher, resuming) goes
through `check_checkpoint_file`, so a missing file gets the same sentence everywhere. Every checkpoint a run writes
goes through `AtomicCheckpointIO`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from tl_lightning.utils import BadValue, NotFound, atomic_path

__all__ = [
    "AtomicCheckpointIO",
    "check_checkpoint_file",
    "check_same_classes",
    "check_same_shapes",
    "load_tensors",
    "read_checkpoint",
    "read_record",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing each local checkpoint to a temporary file beside it and renaming it into
    place (`utils.atomic_path`).

    Lightning's own writes through fsspec, whose local transaction stages the file in the system temp folder and
    moves it: across filesystems that move is a copy, and a full disk left a truncated checkpoint under the final
    name. Here the previous checkpoint stays whole whatever happens, and a full disk ends in one sentence
    (`utils.DiskFull`). Remote paths (`s3://...`) keep fsspec's writer.

    >>> from lightning.pytorch import Trainer
    >>> Trainer(plugins=[AtomicCheckpointIO()], logger=False).strategy.checkpoint_io.__class__.__name__
    'AtomicCheckpointIO'
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def check_checkpoint_file(path: str | Path, role: str = "Checkpoint") -> Path:
    """`path` as a `Path` if it is an existing file.

    Raises:
        FileNotFoundError: it is not; the message names it and where run checkpoints live.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(
            f"{role} '{path}' does not exist. Run checkpoints are in outputs/train/runs/<run>/checkpoints/ "
            "(model.ckpt for the run's model, last.ckpt to resume)."
        )
    return path


USE_A_RUN = "Use a model.ckpt or last.ckpt of a tl_lightning run."


def read_checkpoint(path: str | Path, role: str = "Checkpoint") -> dict[str, Any]:
    """The checkpoint dict at `path`, on the CPU, loaded with `weights_only=True`.

    Raises:
        NotFound: no such file.
        BadValue: the file is truncated or damaged, is not a PyTorch file, holds objects other than tensors
            (another library's pickle), or is a PyTorch file but not a tl_lightning checkpoint; the message says
            which.
    """
    path = check_checkpoint_file(path, role)
    checkpoint = load_tensors(path, role, USE_A_RUN)
    keys = sorted(checkpoint) if isinstance(checkpoint, dict) else []
    if not {"state_dict", "hyper_parameters", "tl_lightning"} <= set(keys):
        raise BadValue(
            f"{role} '{path}' is a PyTorch file but not a tl_lightning checkpoint (its top-level keys: "
            f"{keys[:8] or type(checkpoint).__name__}). {USE_A_RUN[:-1]}; for plain backbone weights use "
            "backbone.weights_file."
        )
    return checkpoint


def read_record(path: str | Path, role: str = "Checkpoint") -> dict[str, Any]:
    """The run's record in a checkpoint (classes, preprocessing, temperature, and in a run's `model.ckpt` the
    abstention rule), read without loading the weights into memory (`mmap`): for a caller that has the model
    already, or needs no model."""
    checkpoint = load_tensors(check_checkpoint_file(path, role), role, USE_A_RUN, mmap=True)
    return dict(checkpoint.get("tl_lightning", {})) if isinstance(checkpoint, dict) else {}


def load_tensors(path: Path, role: str, advice: str, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, every way a file can fail to load named in one sentence
    that starts with `role` and ends with `advice`: not a PyTorch file, Python objects beyond tensors (another
    library's pickle), or truncated. `mmap` maps the tensors instead of reading them, for a caller that needs
    little of them."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
    if head and not head.startswith((b"PK", b"\x80")):  # torch.save writes a zip; before 1.6, a pickle
        raise BadValue(
            f"{role} '{path}' is not a PyTorch file (it starts with {head!r}; torch.save writes a zip "
            f"archive). {advice}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise BadValue(
                f"{role} '{path}' holds Python objects, not only tensors: it was not written by "
                f"tl_lightning (another library, or a full pickled model). {advice}"
            ) from None
        raise _damaged(role, path, size, err) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as err:
        raise _damaged(role, path, size, err) from None


def _damaged(role: str, path: Path, size: int, err: BaseException) -> BadValue:
    return BadValue(
        f"{role} '{path}' cannot be read: it is truncated or damaged ({size:,} bytes; "
        f"{str(err) or type(err).__name__}). An interrupted copy or a full disk does this; use another "
        "copy (a run's model.ckpt or last.ckpt) or copy it again."
    )


def check_same_classes(saved: Sequence[str], current: Sequence[str]) -> None:
    """Raise a `ValueError` naming the differences when a checkpoint's classes are not this run's."""
    if list(saved) == list(current):
        return
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    detail = "same names, other order"
    if missing or extra:
        detail = f"only in the checkpoint: {missing}; only in this run: {extra}"
    raise BadValue(
        f"The checkpoint was trained on classes {list(saved)} but this run has {list(current)} ({detail}). "
        "Resume only with the same class folders; to reuse its backbone for new classes, start a new run with "
        "backbone.weights_file pointing at exported backbone weights."
    )


# The settings that decide a TransferClassifier's tensor shapes, named when a checkpoint's shapes are not the model's.
SHAPE_SETTINGS = ("backbone", "backbone_kwargs", "pool", "head_hidden", "head_norm")


def check_same_shapes(saved: Mapping[str, Any], model: nn.Module, path: str | Path | None = None) -> None:
    """Raise a `ValueError` naming the first tensor whose shape differs, and the settings behind it, when the
    checkpoint `saved` (read from `path`, where known) holds a model of another shape than `model`: Lightning would
    otherwise stop in `load_state_dict` with a list of every mismatched tensor."""
    tensors = saved.get("state_dict") or {}
    own = model.state_dict()
    differs = [
        key
        for key in sorted(own.keys() | tensors.keys())
        if key not in own or key not in tensors or tuple(own[key].shape) != tuple(tensors[key].shape)
    ]
    if not differs:
        return
    key = differs[0]
    there = tuple(tensors[key].shape) if key in tensors else "absent"
    here = tuple(own[key].shape) if key in own else "absent"
    hparams, current = saved.get("hyper_parameters") or {}, getattr(model, "hparams", {})
    settings = [
        f"model.{name}={hparams.get(name)!r} there, {current.get(name)!r} here"
        for name in SHAPE_SETTINGS
        if hparams.get(name) != current.get(name)
    ]
    because = f" ({'; '.join(settings)})" if settings else ""
    which = f"Checkpoint '{path}'" if path else "The checkpoint"
    raise BadValue(
        f"{which} holds a model of another shape than this config builds: {key} is {there} there and "
        f"{here} here{because}. Run with the checkpoint's settings, or start a new run without ckpt_path."
    )
