"""Learning-rate schedules stepped per optimizer step.

Written as a `LambdaLR` because torch has no single warmup-then-cosine scheduler (`SequentialLR` warns and
misbehaves on resume), and timm's schedulers need `step_update` calls that Lightning does not make. A
`LambdaLR` scales every param group's own base LR, so discriminative LRs keep their ratios, and its state is
only the step count, so a resumed run lands on exactly the same LRs.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from tl_lightning.utils import BadValue


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.01
) -> LambdaLR:
    """Linear warmup over `warmup_fraction` of `total_steps`, then cosine decay to `min_lr_ratio` x base LR.

    >>> import torch
    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    >>> sched = warmup_cosine(opt, total_steps=100, warmup_fraction=0.1)
    >>> round(sched.lr_lambdas[0](10), 3), round(sched.lr_lambdas[0](100), 3)
    (1.0, 0.01)
    """
    if total_steps < 1:
        raise BadValue(f"total_steps must be positive, got {total_steps}.")
    warmup = max(1, round(warmup_fraction * total_steps)) if warmup_fraction > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
