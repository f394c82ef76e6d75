"""Exact resume: every random generator's state saved with each checkpoint and restored from it; a scheduler's requeue
signal taken where a checkpoint is consistent.

Lightning's checkpoints restore the model, optimizer, schedulers and loops, not the random generators, so a run
resumed from `last.ckpt` draws other augmentations, shuffles and dropout masks than the run it continues, and ends
elsewhere. Lightning's own helpers (`_collect_rng_states`) keep NumPy's state as an array, which a checkpoint loaded
with `weights_only=True` refuses; here every state is stored as tensors and plain numbers.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

log = logging.getLogger(__name__)


class ResumeRNG(pl.Callback):
    """Save the torch (CPU and CUDA), NumPy and Python random states in each checkpoint; restore them on resume.

    A resumed run then trains exactly as the uninterrupted one: the training order and each sample's augmentation
    seed come from the datamodule's sampler (`data.sampling`), so loader workers hold no state a resume needs.
    """

    def state_dict(self) -> dict[str, Any]:
        _, keys, position, has_gauss, gauss = np.random.get_state()
        version, python_state, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": {
                "version": version,
                "state": torch.tensor(python_state, dtype=torch.int64),
                "gauss": python_gauss,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        saved = state_dict["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, saved["position"], saved["has_gauss"], saved["gauss"]))
        python = state_dict["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))


class Preemption(pl.Callback):
    """A scheduler's requeue signal, acted on between steps, after `last.ckpt` is saved.

    submitit (`launcher=slurm`) has SLURM send SIGUSR2 before a time limit or a preemption, and its handler requeues
    the job and exits at once, from whatever line the signal interrupted: inside an optimizer step, the checkpoint
    Lightning writes on the way out could hold half-updated weights. While training, this callback turns the signal
    into Lightning's own SIGTERM stop (taken after the step under way; `last.ckpt` is then saved) and keeps the
    scheduler's handler for `hand_over`, which the caller runs once the checkpoint is on disk. A signal that no handler
    awaits (a plain run) keeps its default. Hand-written: Lightning's `SLURMEnvironment` requeues on SIGUSR1 itself,
    but it does not register a handler where submitit already has one, and it saves from inside the handler too.
    """

    def __init__(self, signals: Sequence[str] = ("SIGUSR2",)) -> None:
        self.signals = [getattr(signal, name) for name in signals]
        self.deferred: list[tuple[Callable[..., Any], int]] = []
        self._replaced: dict[int, Callable[..., Any]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            handler = signal.getsignal(signum)
            if callable(handler):
                self._replaced[signum] = handler
                signal.signal(signum, self._defer)

    def _defer(self, signum: int, frame: FrameType | None) -> None:
        log.warning(
            "Received %s: stopping after the step under way; the scheduler's handler (requeue) runs once "
            "last.ckpt is saved.",
            signal.Signals(signum).name,
        )
        self.deferred.append((self._replaced[signum], signum))
        signal.raise_signal(signal.SIGTERM)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._replaced.items():
            signal.signal(signum, handler)
        self._replaced = {}

    def hand_over(self) -> None:
        """Run the scheduler's deferred handlers (submitit's: requeue this job, then exit)."""
        self.restore()
        deferred, self.deferred = self.deferred, []
        for handler, signum in deferred:
            handler(signum, None)
