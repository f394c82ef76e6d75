"""A callback that sends its own process a signal at a chosen point, for tests/app/test_resume.py (imported through
PYTHONPATH by `python train.py +callbacks.kill._target_=kill_at.KillAt ...`)."""

import os
import signal as signal_module
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch


class KillAt(pl.Callback):
    """Send this process `signal` (SIGKILL: die without any chance to clean up) at the start of `epoch`, after
    `batch` training batches of it; with `once`, only if that file does not exist yet (it is created), so a job that
    a scheduler starts again is not stopped a second time.

    With `inside` (a source file's name, e.g. "feature_cache.py"), the signal comes instead at the first forward
    pass of any module made while that file's code is running: from within work that no hook brackets, such as
    the feature cache's extraction in `setup`."""

    def __init__(
        self,
        epoch: int = -1,
        batch: int = 0,
        signal: str = "SIGKILL",
        once: str | None = None,
        inside: str | None = None,
    ) -> None:
        self.epoch, self.batch, self.signal = epoch, batch, getattr(signal_module, signal)
        self.once = Path(once) if once else None
        if inside is not None:
            torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: self._inside(inside))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self._send()

    def _inside(self, filename: str) -> None:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_filename.endswith(os.sep + filename):
                self._send()
            frame = frame.f_back

    def _send(self) -> None:
        if self.once is not None:
            if self.once.exists():
                return
            self.once.touch()
        os.kill(os.getpid(), self.signal)
