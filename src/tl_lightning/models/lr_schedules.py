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


def _cosine(start: float, end: float, position: float) -> float:
    """From `start` to `end` along half a cosine, `position` in [0, 1]."""
    return start + (1 + math.cos(math.pi * (1 - position))) * (end - start) / 2


def _one_cycle(position: float, pct_start: float, low: float, high: float, end: float) -> float:
    """fastai's `combined_cos`: `low` up to `high` over the first `pct_start` of the cycle, then down to `end`."""
    if position < pct_start:
        return _cosine(low, high, position / pct_start)
    return _cosine(high, end, (position - pct_start) / (1 - pct_start))


class FineTuneOneCycle(LambdaLR):
    """fastai's `fine_tune` schedule as one scheduler: a one-cycle over the frozen epochs, then a second over the rest.

    Each param group's own LR is the unfrozen cycle's peak (discriminative LRs keep their ratios); the frozen cycle
    peaks at `frozen_peak` times it, as `fine_tune(base_lr=2e-3)` fits the head at 2e-3 and then everything at half
    that. Adam's first beta (SGD's momentum) cycles the other way, from `momentum[0]` down to `momentum[1]` and back,
    as `fit_one_cycle` does. Written here because fastai is not a dependency, torch's `OneCycleLR` runs one cycle
    only, and the state must stay the step count so that a resumed run lands on the same LRs and betas.

    >>> import torch
    >>> opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
    >>> sched = FineTuneOneCycle(opt, total_steps=100, steps_per_epoch=10)
    >>> round(opt.param_groups[0]["lr"], 6), opt.param_groups[0]["betas"][0]
    (8e-05, 0.95)
    >>> for _ in range(10):
    ...     opt.step(); sched.step()
    >>> round(opt.param_groups[0]["lr"], 6), opt.param_groups[0]["betas"][0]
    (0.0002, 0.95)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        steps_per_epoch: int,
        frozen_epochs: int = 1,
        frozen_peak: float = 2.0,
        frozen_pct_start: float = 0.99,
        pct_start: float = 0.3,
        frozen_div: float = 25.0,
        div: float = 5.0,
        final_div: float = 1e5,
        momentum: tuple[float, float] = (0.95, 0.85),
    ) -> None:
        if total_steps < 1 or steps_per_epoch < 1:
            raise BadValue(f"total_steps and steps_per_epoch must be positive, got {total_steps}, {steps_per_epoch}.")
        self.frozen_steps = min(total_steps, frozen_epochs * steps_per_epoch)
        self.total_steps = total_steps
        self.cycle = (frozen_peak, frozen_pct_start, frozen_div, pct_start, div, final_div)
        self.momentum = tuple(momentum)
        super().__init__(optimizer, self.factor)

    def _phase(self, step: int) -> tuple[float, float, float, float]:
        """(position in the current cycle, its pct_start, its peak factor, its starting divisor)."""
        frozen_peak, frozen_pct, frozen_div, pct_start, div, _ = self.cycle
        if step < self.frozen_steps:
            return step / self.frozen_steps, frozen_pct, frozen_peak, frozen_div
        remaining = max(1, self.total_steps - self.frozen_steps)
        return min(1.0, (step - self.frozen_steps) / remaining), pct_start, 1.0, div

    def factor(self, step: int) -> float:
        position, pct, peak, div = self._phase(step)
        return _one_cycle(position, pct, peak / div, peak, peak / self.cycle[-1])

    def beta(self, step: int) -> float:
        position, pct, _, _ = self._phase(step)
        high, low = self.momentum
        return _one_cycle(position, pct, high, low, high)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        self._set_betas()

    def _set_betas(self) -> None:
        value = self.beta(self.last_epoch)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (value, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = value
