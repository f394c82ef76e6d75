"""The metrics of each stage, as torchmetrics collections: one definition for the training loops and for scoring
logits gathered in one pass over a split (`TransferClassifier.score`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

# Per-class accuracy is logged as one scalar per class; past this many classes it would swamp the logger.
PER_CLASS_LOG_LIMIT = 50
# Below this many validation images, accuracy moves in steps of more than a point, and the best of a run's epochs on
# it is mostly the luck of a few images. The loss, which reads every image's confidence, selects there instead.
MIN_ACCURACY_IMAGES = 100


def selection_score(acc: Any, loss: Any, samples: Any, accuracy_from: int = MIN_ACCURACY_IMAGES) -> Any:
    """What checkpoints, early stopping and the probe floor select on, higher is better (`val/score`): on at least
    `accuracy_from` validation images, accuracy with ties broken by lower loss (loss counts for less than one
    image, `loss / (10 N)`, so no accuracy difference is overturned); on fewer, the negative loss, which callers
    give as the run will calibrate the model (`TransferClassifier.selection_losses`). Floats or tensors.

    >>> selection_score(0.9, 0.3, 200), selection_score(0.9, 0.3, 40), selection_score(0.9, 0.3, 40, accuracy_from=0)
    (0.89985, -0.3, 0.89925)
    """
    if samples < accuracy_from:
        return -loss
    return acc - loss / (10 * samples)


def binomial_stderr(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on `images` independent predictions.

    >>> round(binomial_stderr(0.55, 225), 3)
    0.033
    """
    return math.sqrt(accuracy * (1 - accuracy) / max(1, images))


def beats(value: float, reference: float, stderr: float) -> bool:
    """Whether `value` beats `reference` by more than one standard error: the one rule by which every measured
    choice (a resolution, a crop, flips, fine-tuning over the probe) departs from its default, so that a difference
    the measurement cannot tell from noise never changes what runs.

    >>> beats(0.90, 0.86, 0.03), beats(0.88, 0.86, 0.03)
    (True, False)
    """
    return value > reference + stderr


def optimal_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of `softmax(logits / T)`, optimised as log T with L-BFGS (Guo et
    al., 2017); one scalar, so written here rather than taken from a library."""
    logits, targets = logits.detach().float(), targets.detach()
    if not bool(torch.isfinite(logits).all()):
        return 1.0  # a diverged model: no temperature makes it right, and its loss says so
    # Autograd even inside the validation loop's inference mode, on a copy of its (inference) logits.
    with torch.inference_mode(False), torch.enable_grad():
        logits, targets = logits.clone(), targets.clone()
        log_t = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        try:
            optimizer.step(closure)
        except RuntimeError as err:  # logits so large (a diverged model) that L-BFGS's float arithmetic overflows
            if "overflow" not in str(err):
                raise
            return 1.0
    return float(log_t.detach().exp())


# A temperature fitted outside these is not used: the model's logits carry no signal worth scaling there (a model
# that predicts one class drives T to infinity).
TEMPERATURE_RANGE = (0.05, 20.0)
# Fewer validation images than this cannot tell a temperature apart from noise.
MIN_CALIBRATION_IMAGES = 30


def calibration_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> tuple[float, str]:
    """The temperature a run calibrates with (`optimal_temperature` on validation), and why it is 1 instead
    where a fit would mislead ("" where it was fitted): fewer than `MIN_CALIBRATION_IMAGES` images, a perfectly
    separated split (its NLL keeps falling as T -> 0, so any T would be arbitrary and overconfident on new data),
    or a fit outside `TEMPERATURE_RANGE` (predictions close to uninformative).

    >>> calibration_temperature(torch.zeros(3, 2), torch.tensor([0, 1, 1]))[1]
    '3 validation images are too few to fit it on; probabilities stay as the model gives them.'
    """
    if len(targets) < MIN_CALIBRATION_IMAGES:
        why = f"{len(targets)} validation images are too few to fit it on; "
        return 1.0, why + "probabilities stay as the model gives them."
    if bool((logits.argmax(-1) == targets).all()):
        why = f"the model separates all {len(targets)} validation images, so the fit would only drive T towards 0 "
        return 1.0, why + "and make it overconfident on new images."
    fitted = optimal_temperature(logits, targets, max_iter)
    low, high = TEMPERATURE_RANGE
    if not low <= fitted <= high:
        why = f"the fitted temperature {fitted:.3g} is outside [{low}, {high}]. The model's validation predictions "
        return 1.0, why + "are close to uninformative: check training before trusting its probabilities."
    return fitted, ""


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
