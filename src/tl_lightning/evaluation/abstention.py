"""When to say "not sure": a confidence threshold chosen on the validation split, and what it gives on the test split.

Selective classification (Geifman and El-Yaniv, 2017): a classifier that may abstain answers only where its top
calibrated probability reaches a threshold, chosen as the lowest one at which the answered validation images
reach a target accuracy (95% unless told otherwise), so it answers as often as that accuracy allows. The test
split, which chose nothing, then says what the threshold gives: the accuracy on the answers made and the share of
images answered. A grower photographing a leaf reads "not sure, take another photo" instead of a wrong disease.

Written here rather than taken from a library: torchmetrics has no selective-classification metric, and the rule is
a sort and a cumulative sum.

Example:
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]])
    >>> rule = choose_threshold(probs, torch.tensor([0, 0, 1, 0]), target_accuracy=0.9)
    >>> round(rule.threshold, 2), rule.accuracy, rule.share
    (0.8, 1.0, 0.5)
    >>> answered(probs, torch.tensor([0, 0, 1, 0]), rule.threshold)
    (1.0, 0.5)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

TARGET_ACCURACY = 0.95


@dataclass(frozen=True)
class Abstention:
    """The threshold, and the accuracy and share of images answered at it on the split that chose it. `threshold`
    above 1: no share of that split reached the target, so the model is never sure."""

    threshold: float
    target_accuracy: float
    accuracy: float | None
    share: float

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def choose_threshold(
    probabilities: torch.Tensor, targets: torch.Tensor, target_accuracy: float = TARGET_ACCURACY
) -> Abstention:
    """The lowest top probability at which the images at or above it are classified with at least
    `target_accuracy` (calibrated `probabilities`, one row per image)."""
    confidence, predicted = probabilities.max(dim=1)
    order = confidence.argsort(descending=True)
    correct = (predicted == targets)[order].double().cumsum(0)
    counts = torch.arange(1, len(order) + 1, dtype=torch.float64)
    running = correct / counts
    # ties: an image can only be answered with all the images of the same confidence
    last_of_tie = torch.ones_like(running, dtype=torch.bool)
    last_of_tie[:-1] = confidence[order][:-1] != confidence[order][1:]
    reached = ((running >= target_accuracy) & last_of_tie).nonzero()
    if len(reached) == 0:
        return Abstention(1.01, target_accuracy, None, 0.0)
    k = int(reached[-1])
    return Abstention(float(confidence[order][k]), target_accuracy, float(running[k]), (k + 1) / len(order))


def answered(probabilities: torch.Tensor, targets: torch.Tensor, threshold: float) -> tuple[float | None, float]:
    """The accuracy on the images whose top probability reaches `threshold` (None: none does), and their share."""
    confidence, predicted = probabilities.max(dim=1)
    kept = confidence >= threshold
    if not kept.any():
        return None, 0.0
    return float((predicted[kept] == targets[kept]).double().mean()), float(kept.double().mean())


def per_class_accuracy(probabilities: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
    """Each class's accuracy (recall) on the split: how often an image of it is given its own class."""
    predicted = probabilities.argmax(dim=1)
    result = {}
    for index, name in enumerate(class_names):
        mine = targets == index
        result[name] = float((predicted[mine] == index).double().mean()) if mine.any() else None
    return result
