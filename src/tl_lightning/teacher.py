"""The frozen teacher of knowledge distillation: loaded from a checkpoint, fed batches in its own preprocessing.

The loss itself (soft targets at a temperature plus hard labels) is `losses.distillation_loss`; this module
holds what makes a teacher usable beside a student of another size or normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def load_teacher(path: str, class_names: Sequence[str]) -> Any:
    """A `TransferClassifier` from `path`, in eval mode with no trainable parameter, checked to have our classes."""
    from tl_lightning.module import TransferClassifier, check_same_classes

    if not Path(path).is_file():
        raise FileNotFoundError(
            f"Teacher checkpoint '{path}' does not exist. Point model.teacher_checkpoint at a best.ckpt of an "
            "earlier run (outputs/train/runs/<run>/checkpoints/best.ckpt), or set it to null."
        )
    teacher = TransferClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    check_same_classes(teacher.class_names, class_names)
    teacher.requires_grad_(False)
    return teacher


def convert_batch(x: torch.Tensor, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> torch.Tensor:
    """Undo the student's normalisation (`mine`), resize to the teacher's input size, apply the teacher's."""
    shape = (1, -1, 1, 1)
    raw = x * x.new_tensor(mine["std"]).view(shape) + x.new_tensor(mine["mean"]).view(shape)
    size = tuple(theirs["input_size"][1:])
    if tuple(raw.shape[-2:]) != size:
        raw = F.interpolate(raw, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (raw - x.new_tensor(theirs["mean"]).view(shape)) / x.new_tensor(theirs["std"]).view(shape)
