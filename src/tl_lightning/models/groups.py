"""Layer groups, ordered input -> head, and the optimizer param groups with discriminative LRs built on them.

Groups come from each timm model's own `group_matcher` (the table timm uses for layer decay), so there is
no per-architecture split table here. Param groups are written with real `lr` values, named, and all
registered from step 0, so any torch or Lightning scheduler sees every group and resume restores them by name.

`python -m tl_lightning groups BACKBONE` prints a backbone's groups.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from lightning.pytorch.utilities import rank_zero_warn
from timm.layers import DropBlock2d, DropPath
from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)


@dataclass
class LayerGroup:
    """Consecutive layers that freeze, unfreeze and share a learning rate together.

    `stochastic` holds the group's modules whose output is random in train mode (dropout, DropPath, DropBlock):
    a frozen group holds them in eval mode with its BatchNorm, so a frozen backbone computes a fixed function.
    """

    name: str
    params: list[tuple[str, nn.Parameter]]
    batchnorms: list[_BatchNorm]
    stochastic: list[nn.Module] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for _, p in self.params)


def layer_groups(model: nn.Module, prefix: str = "") -> list[LayerGroup]:
    """Split `model` into groups ordered input -> output using its timm `group_matcher` (coarse: stages).

    A model without a matcher becomes one group, with a warning, since its layers cannot be told apart
    safely. `prefix` is prepended to parameter names (e.g. ``"backbone."``) so they match the outer module's.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        grouped = group_parameters(model, model.group_matcher(coarse=True))
        names_per_group = [names for _, names in sorted(grouped.items())]
    else:
        rank_zero_warn(
            f"{type(model).__name__} has no timm `group_matcher`: the whole backbone is one layer group.\n"
            "HINT: gradual unfreezing and discriminative LRs need a timm model (`python -m tl_lightning groups`)."
        )
        names_per_group = [list(params)]
    groups = []
    labels = _unique_names(names_per_group) if len(names_per_group) > 1 else ["backbone"]
    random_modules = _stochastic_by_group(model, names_per_group)
    for index, (label, names) in enumerate(zip(labels, names_per_group, strict=True)):
        owners = dict.fromkeys(modules[n.rpartition(".")[0]] for n in names)
        groups.append(
            LayerGroup(
                name=label,
                params=[(prefix + n, params[n]) for n in names],
                batchnorms=[m for m in owners if isinstance(m, _BatchNorm)],
                stochastic=random_modules.get(index, []),
            )
        )
    return groups


def _stochastic_by_group(model: nn.Module, names_per_group: Sequence[Sequence[str]]) -> dict[int, list[nn.Module]]:
    """Dropout, DropPath and DropBlock modules by group index. They hold no parameters, so each belongs to the
    group of the parameters under its nearest enclosing module (a block's `drop_path` to that block). timm
    models also drop out pooled features functionally when `drop_rate > 0`, under the model's own train flag:
    the model itself then counts as stochastic in the group nearest the head."""
    group_of_path: dict[str, int] = {}
    for index, names in enumerate(names_per_group):
        for name in names:
            parts = name.split(".")[:-1]
            for depth in range(len(parts), -1, -1):
                group_of_path.setdefault(".".join(parts[:depth]), index)
    found: dict[int, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, (_DropoutNd, DropPath, DropBlock2d)):
            continue
        parts = name.split(".")
        while parts and ".".join(parts) not in group_of_path:
            parts.pop()
        found.setdefault(group_of_path.get(".".join(parts), len(names_per_group) - 1), []).append(module)
    if getattr(model, "drop_rate", 0) and names_per_group:
        found.setdefault(len(names_per_group) - 1, []).append(model)
    return found


def _group_name(param_names: Sequence[str], detailed: bool = False) -> str:
    """Name a group by the longest shared module path of each top-level module it spans.

    `detailed` adds the distinct sub-modules under that path (`features.denseblock1+transition1`), for groups
    whose short names collide.
    """
    tops: dict[str, list[list[str]]] = {}
    for name in param_names:
        parts = name.split(".")
        path = parts[:-1] or parts  # a top-level parameter (cls_token) names itself
        tops.setdefault(parts[0], []).append(path)
    labels = []
    for paths in tops.values():
        common = paths[0]
        for path in paths[1:]:
            n = 0
            while n < min(len(common), len(path)) and common[n] == path[n]:
                n += 1
            common = common[:n]
        label = ".".join(common)
        below = list(dict.fromkeys(p[len(common)] for p in paths if len(p) > len(common)))
        if detailed and below:
            label += "." + "+".join(below)
        labels.append(label)
    return "+".join(labels)


def _unique_names(names_per_group: Sequence[Sequence[str]]) -> list[str]:
    labels = [_group_name(names) for names in names_per_group]
    counts = Counter(labels)
    labels = [
        _group_name(names, detailed=True) if counts[label] > 1 else label
        for label, names in zip(labels, names_per_group, strict=True)
    ]
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        unique.append(f"{label}#{seen[label]}" if seen[label] else label)
        seen[label] += 1
    return unique


SPREADS = ("geometric", "flat")


def discriminative_lrs(num_groups: int, lr: float, lr_mult: float, spread: str = "geometric") -> list[float]:
    """LRs from `lr / lr_mult` (first group) to `lr` (last group, the head): spaced geometrically (ULMFiT), or
    `flat`: every group before the head at `lr / lr_mult`, as fastai's `slice(lr / lr_mult, lr)` gives a timm body.

    >>> [round(x, 6) for x in discriminative_lrs(3, lr=1e-3, lr_mult=100)]
    [1e-05, 0.0001, 0.001]
    >>> [round(x, 6) for x in discriminative_lrs(3, lr=1e-3, lr_mult=100, spread="flat")]
    [1e-05, 1e-05, 0.001]
    """
    if lr_mult < 1:
        raise BadValue(f"lr_mult must be >= 1 (first group's LR is lr / lr_mult), got {lr_mult}.")
    if spread not in SPREADS:
        raise BadValue(f"lr_spread must be one of {', '.join(SPREADS)}, got {spread!r}.")
    if num_groups == 1:
        return [lr]
    if spread == "flat":
        return [lr / lr_mult] * (num_groups - 1) + [lr]
    return [lr / lr_mult ** ((num_groups - 1 - i) / (num_groups - 1)) for i in range(num_groups)]


def build_param_groups(groups: Sequence[LayerGroup], lrs: Sequence[float]) -> list[dict]:
    """One named optimizer param group per layer group, and a `/no_decay` twin for norms and biases.

    Parameters with fewer than two dimensions (norm scales, biases, tokens) get `weight_decay=0`, as timm's
    `param_groups_weight_decay` does; the others take the optimizer's own `weight_decay`.
    """
    param_groups = []
    for group, lr in zip(groups, lrs, strict=True):
        decay = [p for _, p in group.params if p.ndim > 1]
        no_decay = [p for _, p in group.params if p.ndim <= 1]
        if decay:
            param_groups.append({"name": group.name, "params": decay, "lr": lr})
        if no_decay:
            param_groups.append({"name": f"{group.name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
    return param_groups
