"""Classification heads put on a headless backbone's pooled features, and the calibrated probabilities read off
their logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tl_lightning.utils import BadValue


def create_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    """A linear head, or an MLP `Linear -> ReLU -> Dropout` per hidden size, then `Linear`.

    Dropout sits before each linear layer that follows a hidden layer, and before the single linear layer
    of a plain head, as timm's classifiers place `drop_rate`.

    >>> create_head(1280, 10, hidden=[256], dropout=0.3)[-1]
    Linear(in_features=256, out_features=10, bias=True)
    """
    if num_classes < 1:
        raise BadValue(f"num_classes must be at least 1, got {num_classes}.")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        width = size
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def scaled_softmax(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Class probabilities at a calibration temperature (`softmax(logits / T)`), as prediction, export and the
    test report all read them.

    >>> scaled_softmax(torch.tensor([[2.0, 0.0]]), temperature=2.0).round(decimals=4)
    tensor([[0.7311, 0.2689]])
    """
    return (logits / temperature).softmax(dim=-1)
