"""The metrics of each stage, as torchmetrics collections: one definition for the training loops and for scoring
logits gathered in one pass over a split (`TransferClassifier.score`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

# Per-class accuracy is logged as one scalar per class; past this many classes it would swamp the logger.
PER_CLASS_LOG_LIMIT = 50
# Below this many validation images, accuracy moves in steps of more than a point, and the best of a run's epochs on
# it is mostly the luck of a few images (on 15 images one run kept the epoch whose accuracy jumped by one image while
# its loss rose by a third, and lost 12 points on test against its probe). The loss, which reads every image's
# confidence, selects there instead.
MIN_ACCURACY_IMAGES = 100


def selection_score(acc: Any, loss: Any, samples: Any, accuracy_from: int = MIN_ACCURACY_IMAGES) -> Any:
    """What checkpoints, early stopping and the probe floor select on, higher is better (`val/score`): on at least
    `accuracy_from` validation images, accuracy with ties broken by lower loss (loss counts for less than one
    image, `loss / (10 N)`, so no accuracy difference is overturned); on fewer, the negative loss. Floats or tensors.

    >>> selection_score(0.9, 0.3, 200), selection_score(0.9, 0.3, 40), selection_score(0.9, 0.3, 40, accuracy_from=0)
    (0.89985, -0.3, 0.89925)
    """
    if samples < accuracy_from:
        return -loss
    return acc - loss / (10 * samples)


def stage_metrics(num_classes: int, stage: str) -> MetricCollection:
    """Accuracy (micro, macro, per class) for every stage; macro precision, recall and F1 for test too."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "acc_macro": MulticlassAccuracy(num_classes, average="macro"),
        "acc_class": MulticlassAccuracy(num_classes, average=None),
    }
    if stage == "test":
        metrics |= {
            "precision_macro": MulticlassPrecision(num_classes, average="macro"),
            "recall_macro": MulticlassRecall(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        }
    return MetricCollection(metrics, prefix=f"{stage}/")


def per_class_scalars(
    values: Mapping[str, torch.Tensor], class_names: Sequence[str], stage: str
) -> dict[str, torch.Tensor]:
    """`values` with the per-class accuracy vector split into one scalar per class name (none past the limit)."""
    scalars = dict(values)
    per_class = scalars.pop(f"{stage}/acc_class")
    if len(per_class) <= PER_CLASS_LOG_LIMIT:
        scalars |= {f"{stage}/acc_class/{n}": v for n, v in zip(class_names, per_class, strict=True)}
    return scalars
