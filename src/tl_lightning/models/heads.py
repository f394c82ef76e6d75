"""Classification heads put on a headless backbone's pooled features, and the calibrated probabilities read off
their logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tl_lightning.utils import BadValue


def create_head(
    in_features: int,
    num_classes: int,
    hidden: Sequence[int] = (),
    dropout: float | Sequence[float] = 0.0,
    norm: bool = False,
) -> nn.Sequential:
    """A linear head, or an MLP `Linear -> ReLU` per hidden size, then `Linear`.

    A single `dropout` sits before the last linear layer, as timm's classifiers place `drop_rate`; a sequence gives
    one rate per linear layer, each before its layer (fastai's `create_head`: 0.25 then 0.5). With `norm`, a
    `BatchNorm1d` comes before each linear layer, as in fastai's `create_head`: it standardises the pooled features
    the way the linear probe's scaler does (so a probe starts the head exactly, `ProbeFloor`), and keeps doing so
    when fine-tuning moves the backbone's statistics, where a head fitted to fixed feature scales would be thrown off.

    >>> create_head(1280, 10, hidden=[256], dropout=0.3)[-1]
    Linear(in_features=256, out_features=10, bias=True)
    >>> [type(m).__name__ for m in create_head(1280, 10, norm=True, dropout=0.25)]
    ['BatchNorm1d', 'Dropout', 'Linear']
    >>> [type(m).__name__ for m in create_head(2560, 5, hidden=[512], dropout=[0.25, 0.5], norm=True)]
    ['BatchNorm1d', 'Dropout', 'Linear', 'ReLU', 'BatchNorm1d', 'Dropout', 'Linear']
    """
    if num_classes < 1:
        raise BadValue(f"num_classes must be at least 1, got {num_classes}.")
    rates = _dropout_rates(dropout, len(hidden) + 1)
    layers: list[nn.Module] = []
    width = in_features
    sizes = [*hidden, num_classes]
    for i, (size, rate) in enumerate(zip(sizes, rates, strict=True)):
        if norm:
            layers.append(nn.BatchNorm1d(width))
        if rate > 0:
            layers.append(nn.Dropout(rate))
        layers.append(nn.Linear(width, size))
        if i < len(hidden):
            layers.append(nn.ReLU(inplace=True))
        width = size
    return nn.Sequential(*layers)


def _dropout_rates(dropout: float | Sequence[float], linears: int) -> list[float]:
    """One rate per linear layer: a single rate goes before the last one only."""
    if isinstance(dropout, (int, float)):
        return [0.0] * (linears - 1) + [float(dropout)]
    rates = [float(rate) for rate in dropout]
    if len(rates) != linears:
        raise BadValue(
            f"head_dropout has {len(rates)} rates for a head of {linears} linear layers: give one per layer "
            "(hidden sizes + 1), or a single rate for the last layer."
        )
    return rates


@torch.no_grad()
def as_single_linear(head: nn.Sequential) -> nn.Linear | None:
    """The head as one `Linear` on the raw pooled features, for formats whose classifier is a single linear
    layer (timm's): an input `BatchNorm1d` (eval statistics) folded into the weights, dropout dropped (it is the
    identity at inference). `None` for a head with hidden layers."""
    linears = [m for m in head if isinstance(m, nn.Linear)]
    if len(linears) != 1 or not all(isinstance(m, (nn.BatchNorm1d, nn.Dropout, nn.Linear)) for m in head):
        return None
    linear = linears[0]
    weight, bias = linear.weight.clone(), linear.bias.clone()
    for norm in (m for m in head if isinstance(m, nn.BatchNorm1d)):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = bias + weight @ (norm.bias - norm.running_mean * scale)
        weight = weight * scale
    folded = nn.Linear(linear.in_features, linear.out_features)
    folded.weight.copy_(weight)
    folded.bias.copy_(bias)
    return folded


def scaled_softmax(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Class probabilities at a calibration temperature (`softmax(logits / T)`), as prediction, export and the
    test report all read them.

    >>> scaled_softmax(torch.tensor([[2.0, 0.0]]), temperature=2.0).round(decimals=4)
    tensor([[0.7311, 0.2689]])
    """
    return (logits / temperature).softmax(dim=-1)
