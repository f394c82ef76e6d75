"""A callback that sends its own process a signal at a chosen point, for tests/app/test_resume.py (imported through
PYTHONPATH by `python train.py +callbacks.kill._target_=kill_at.KillAt ...`)."""

import os
import signal as signal_module
from pathlib import Path

import lightning.pytorch as pl


class KillAt(pl.Callback):
    """Send this process `signal` (SIGKILL: die without any chance to clean up) at the start of `epoch`, after
    `batch` training batches of it; with `once`, only if that file does not exist yet (it is created), so a job that
    a scheduler starts again is not stopped a second time."""

    def __init__(self, epoch: int, batch: int = 0, signal: str = "SIGKILL", once: str | None = None) -> None:
        self.epoch, self.batch, self.signal = epoch, batch, getattr(signal_module, signal)
        self.once = Path(once) if once else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.once is not None:
                if self.once.exists():
                    return
                self.once.touch()
            os.kill(os.getpid(), self.signal)
