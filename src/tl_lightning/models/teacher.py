"""Feeding a distillation teacher: a batch prepared for the student, converted to the teacher's preprocessing.

The loss itself (soft targets at a temperature plus hard labels) is `losses.distillation_loss`; loading the teacher
is `TransferClassifier`'s own job (`TransferClassifier.teacher`), so this module needs no model class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F


def convert_batch(x: torch.Tensor, mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> torch.Tensor:
    """Undo the student's normalisation (`mine`), resize to the teacher's input size, apply the teacher's."""
    shape = (1, -1, 1, 1)
    raw = x * x.new_tensor(mine["std"]).view(shape) + x.new_tensor(mine["mean"]).view(shape)
    size = tuple(theirs["input_size"][1:])
    if tuple(raw.shape[-2:]) != size:
        raw = F.interpolate(raw, size=size, mode="bilinear", antialias=True, align_corners=False)
    return (raw - x.new_tensor(theirs["mean"]).view(shape)) / x.new_tensor(theirs["std"]).view(shape)
