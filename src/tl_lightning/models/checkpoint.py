"""Checks on checkpoint files before and after loading: the one place that says what is wrong with one.

Every entry point that takes a checkpoint (prediction, export, Grad-CAM, a distillation teacher, resuming) goes
through `check_checkpoint_file`, so a missing file gets the same sentence everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["check_checkpoint_file", "check_same_classes"]


def check_checkpoint_file(path: str | Path, role: str = "Checkpoint") -> Path:
    """`path` as a `Path` if it is an existing file.

    Raises:
        FileNotFoundError: it is not; the message names it and where run checkpoints live.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{role} '{path}' does not exist. Run checkpoints are in outputs/train/runs/<run>/checkpoints/ "
            "(best.ckpt for the best epoch, last.ckpt to resume)."
        )
    return path


def check_same_classes(saved: Sequence[str], current: Sequence[str]) -> None:
    """Raise a `ValueError` naming the differences when a checkpoint's classes are not this run's."""
    if list(saved) == list(current):
        return
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    detail = "same names, other order"
    if missing or extra:
        detail = f"only in the checkpoint: {missing}; only in this run: {extra}"
    raise ValueError(
        f"The checkpoint was trained on classes {list(saved)} but this run has {list(current)} ({detail}). "
        "Resume only with the same class folders; to reuse its backbone for new classes, start a new run with "
        "backbone.weights_file pointing at exported backbone weights."
    )
