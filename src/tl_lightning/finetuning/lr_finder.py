"""A learning-rate range test (Smith 2017; fastai's `lr_find`) that keeps discriminative LRs and the schedule.

Written here because Lightning's `Tuner.lr_find` sets every param group to one LR (erasing the ratios between
layer groups) and breaks beside finetuning callbacks (Lightning #14674). This one scales all groups together
(the head's LR sweeps `min_lr` -> `max_lr`) in the optimizer `TransferClassifier.build_optimizer` gives, the one
that trains (`lr_mult` or `lr_factors`), runs for a given phase of the finetuning schedule (head on the frozen
backbone, or the unfrozen backbone), and restores weights, `requires_grad` and BatchNorm modes after.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.module import TransferClassifier
from tl_lightning.utils import save_figure

log = logging.getLogger(__name__)


@dataclass
class RangeTest:
    """Values of `model.lr` tried, the smoothed training loss at each, the suggested `model.lr` (steepest descent),
    and each param group's LR as a multiple of `model.lr` (the ratios training uses)."""

    phase: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float = math.nan
    ratios: dict[str, float] = field(default_factory=dict)


def lr_range_test(
    model: TransferClassifier,
    loader: torch.utils.data.DataLoader,
    finetuning: LayerFinetuning,
    epoch: int,
    phase: str,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
) -> RangeTest:
    """Train for `steps` batches with exponentially rising LRs in the trainable state of `epoch`, then undo it.

    Stops early once the smoothed loss exceeds four times its best.
    """
    saved_state = copy.deepcopy(model.state_dict())
    saved_flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.train()
    finetuning.apply(model, epoch)  # requires_grad and BN modes of that phase
    optimizer = model.build_optimizer()
    ratios = [g["lr"] / model.hparams.lr for g in optimizer.param_groups]
    result = RangeTest(phase, ratios={g["name"]: r for g, r in zip(optimizer.param_groups, ratios, strict=True)})
    smoothed, best, batches = 0.0, math.inf, iter(_cycle(loader))
    try:
        for step in range(steps):
            lr = min_lr * (max_lr / min_lr) ** (step / max(1, steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            x, y = next(batches)
            loss = model.criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            smoothed = 0.98 * smoothed + 0.02 * loss.item()
            value = smoothed / (1 - 0.98 ** (step + 1))  # bias-corrected, as fastai
            result.lrs.append(lr)
            result.losses.append(value)
            best = min(best, value)
            if not math.isfinite(value) or value > 4 * best:
                break
    finally:
        model.load_state_dict(saved_state)
        for param, flag in zip(model.parameters(), saved_flags, strict=True):
            param.requires_grad = flag
        model.train(was_training)
    result.suggestion = _steepest(result.lrs, result.losses)
    return result


def _cycle(loader):
    while True:
        yield from loader


def _steepest(lrs: list[float], losses: list[float]) -> float:
    """The LR where the loss falls fastest per log-LR, skipping the noisy first tenth."""
    start = max(1, len(lrs) // 10)
    if len(lrs) - start < 2:
        return math.nan
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(start, len(lrs) - 1)
    ]
    return lrs[start + min(range(len(slopes)), key=slopes.__getitem__)]


def plot_range_tests(tests: list[RangeTest], path: Path) -> Path:
    """Loss against `model.lr` per phase, the suggestions marked; drawn on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for test in tests:
        ax.plot(test.lrs, test.losses, label=f"{test.phase} (suggested {test.suggestion:.2e})")
        if math.isfinite(test.suggestion):
            ax.axvline(test.suggestion, linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
    ax.set(xscale="log", xlabel="model.lr (the head's LR)", ylabel="smoothed training loss", title="LR range test")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path
