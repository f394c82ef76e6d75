"""Exact resume: every random generator's state saved with each checkpoint and restored from it.

Lightning's checkpoints restore the model, optimizer, schedulers and loops, not the random generators, so a run
resumed from `last.ckpt` draws other augmentations, shuffles and dropout masks than the run it continues, and ends
elsewhere. Lightning's own helpers (`_collect_rng_states`) keep NumPy's state as an array, which a checkpoint loaded
with `weights_only=True` refuses; here every state is stored as tensors and plain numbers.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch


class ResumeRNG(pl.Callback):
    """Save the torch (CPU and CUDA), NumPy and Python random states in each checkpoint; restore them on resume.

    With in-process data loading (or loader workers that are not persistent) a resumed run then trains exactly as
    the uninterrupted one; persistent workers keep generators of their own, which no checkpoint can reach.
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
