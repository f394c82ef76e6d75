"""Calibration: a model's logits on a split, temperature scaling fitted on validation, and calibration error.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar fitted to minimise the validation
negative log-likelihood: the predicted class never changes, only how confident the probabilities are. Fitting
one scalar needs no library (`models.metrics.calibration_temperature`, which selection uses too); the error itself is
torchmetrics' `MulticlassCalibrationError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_calibration_error

from tl_lightning.models.features import extract_features
from tl_lightning.models.metrics import calibration_temperature

log = logging.getLogger(__name__)

ECE_BINS = 15


def collect_logits(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of every batch of `loader`, in loader order, with the model in eval mode.

    A plain loop (`features.extract_features` over the whole classifier) rather than `trainer.predict`: it runs
    in every process of a DDP job on the whole split, so each rank fits the same temperature without gathering.
    """
    return extract_features(model, loader)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the NLL of `softmax(logits / T)`; T = 1, with a warning saying why, where
    a fit would mislead (`models.metrics.calibration_temperature`)."""
    temperature, why = calibration_temperature(logits.detach().float(), targets.detach(), max_iter)
    if why:
        log.warning("Temperature scaling skipped (T = 1): %s", why)
    return temperature


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the support-weighted gap between confidence and accuracy over `bins` equal-width bins."""
    return float(multiclass_calibration_error(probs, targets, probs.shape[1], n_bins=bins, norm="l1"))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: its edges, the mean confidence, the accuracy and the number of samples."""

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    count: torch.Tensor


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> ReliabilityBins:
    """The reliability diagram's data; the same binning as `expected_calibration_error`."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = (torch.bucketize(confidence, edges[1:-1], right=True)).clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    mean = lambda values: torch.bincount(index, values, minlength=bins) / count.clamp(min=1)  # noqa: E731
    return ReliabilityBins(edges, mean(confidence), mean(correct), count)
