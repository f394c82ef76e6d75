"""A benchmark-only callback: the test accuracy of the model as it trains, against the time it took to get there,
so `peers.py` can say when ours first reached a peer's accuracy, not only where it ended.

Scored at the start of training (the head a converged linear probe of the frozen features, LP-FT's first step)
and after every validation, on the test split, off the clock, with every module's train/eval flag and every random
state put back afterwards, so the run trains exactly as it would without it. Never part of the library: the
library does not look at the test split before training ends. The run's own `fit_seconds` includes the scoring;
`off_clock` is what to take off it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from tl_lightning.evaluation.calibration import collect_logits


class TestClock(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.started = time.perf_counter()
        self.off_clock = 0.0
        self.curve: list[tuple[float, float]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._score(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._score(trainer, pl_module)

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        began = time.perf_counter()
        elapsed = began - self.started - self.off_clock
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        # The project's own pass (each module's mode restored after it, so frozen BatchNorm stays frozen).
        logits, targets = collect_logits(pl_module, trainer.datamodule.eval_dataloader("test"))
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        self.curve.append((round(elapsed, 1), float((logits.argmax(-1) == targets).float().mean())))
        self.off_clock += time.perf_counter() - began
        self.path.write_text(json.dumps({"curve": self.curve, "off_clock": round(self.off_clock, 1)}))
