"""A learning-rate range test (Smith 2017; fastai's `lr_find`) that keeps discriminative LRs and the schedule.

Written here because Lightning's `Tuner.lr_find` sets every param group to one LR (erasing the ratios between
layer groups) and breaks beside finetuning callbacks (Lightning #14674). This one scales all groups together
(the head's LR sweeps `min_lr` -> `max_lr`) in the optimizer `TransferClassifier.configure_optimizers` gives, the
one that trains (`lr_mult` or `lr_factors`), runs for a given phase of the finetuning schedule (head on the frozen
backbone, or the unfrozen backbone), and restores weights, `requires_grad` and BatchNorm modes after. It is a
callback run by `trainer.fit`, so the steps are training's own: the trainer's device, precision, gradient clipping
and DDP (each step's loss averaged over the ranks, so all stop together), and the module's `training_step`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

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


class LRRangeTest(Callback):
    """Sets every group's LR before each training step (the head's rising exponentially from `min_lr` to `max_lr`,
    the others in the optimizer's own ratios), records the smoothed loss, and stops the fit once it exceeds four
    times its best. The trainable state is `finetuning`'s at `epoch`. `result` holds the curve."""

    def __init__(
        self,
        finetuning: LayerFinetuning,
        epoch: int,
        phase: str,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        steps: int = 100,
    ) -> None:
        self.finetuning, self.epoch = finetuning, epoch
        self.min_lr, self.max_lr, self.steps = min_lr, max_lr, steps
        self.result = RangeTest(phase)
        self._ratios: list[float] = []
        self._smoothed, self._best = 0.0, math.inf

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = trainer.optimizers[0].param_groups
        self._ratios = [g["lr"] / pl_module.hparams.lr for g in groups]
        self.result.ratios = {g["name"]: r for g, r in zip(groups, self._ratios, strict=True)}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finetuning.apply(pl_module, self.epoch)  # requires_grad and BN modes of that phase

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        step = len(self.result.lrs)
        lr = self.min_lr * (self.max_lr / self.min_lr) ** (step / max(1, self.steps - 1))
        for group, ratio in zip(trainer.optimizers[0].param_groups, self._ratios, strict=True):
            group["lr"] = lr * ratio  # after the schedule's step: this is the LR the coming step takes
        self.result.lrs.append(lr)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        loss = float(trainer.strategy.reduce(loss.detach().float(), reduce_op="mean"))
        step = len(self.result.losses)
        self._smoothed = 0.98 * self._smoothed + 0.02 * loss
        value = self._smoothed / (1 - 0.98 ** (step + 1))  # bias-corrected, as fastai
        self.result.losses.append(value)
        self._best = min(self._best, value)
        if not math.isfinite(value) or value > 4 * self._best:
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.result.lrs = self.result.lrs[: len(self.result.losses)]
        self.result.suggestion = _steepest(self.result.lrs, self.result.losses)


# Trainer settings a range test replaces: it takes `steps` optimizer steps and nothing else.
RANGE_TEST_TRAINER = {
    "max_epochs": -1,
    "limit_val_batches": 0,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "logger": False,
    "enable_model_summary": False,
}


def lr_range_test(
    model: TransferClassifier,
    datamodule: pl.LightningDataModule,
    finetuning: LayerFinetuning,
    epoch: int,
    phase: str,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    steps: int = 100,
    trainer_options: Mapping[str, Any] | None = None,
) -> RangeTest:
    """Train for `steps` batches with exponentially rising LRs in the trainable state of `epoch` under a Lightning
    Trainer built from `trainer_options` (the run's accelerator, devices, strategy, precision, clipping), then undo
    it: weights, `requires_grad` flags and train/eval modes are as they were."""
    saved_state = copy.deepcopy(model.state_dict())
    saved_flags = [p.requires_grad for p in model.parameters()]
    saved_modes = [m.training for m in model.modules()]
    test = LRRangeTest(finetuning, epoch, phase, min_lr, max_lr, steps)
    options = dict(trainer_options or {}) | RANGE_TEST_TRAINER | {"max_steps": steps}
    trainer = pl.Trainer(**options, callbacks=[test])
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        model.load_state_dict(saved_state)
        for param, flag in zip(model.parameters(), saved_flags, strict=True):
            param.requires_grad = flag
        for module, training in zip(model.modules(), saved_modes, strict=True):
            module.training = training
    return test.result


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
