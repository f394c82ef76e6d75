"""The hardware a run uses, chosen at run start where the config says `auto`, and said in one line.

Lightning resolves `accelerator="auto"` itself; precision it does not: `trainer.precision: auto` becomes
`bf16-mixed` on GPUs with bfloat16 (Ampere and later), `16-mixed` on other CUDA GPUs and `32-true` on CPUs (where
autocast emulates bfloat16 slowly unless the CPU has native instructions). Loader workers and
pinned memory follow the trainer inside `ImageFolderDataModule.setup`. Any explicit value wins.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.utils import usable_cpus

AUTO = "auto"


def auto_precision(accelerator: str) -> str:
    """The precision for `accelerator` (a Lightning accelerator name, or "auto") on this machine."""
    cuda = accelerator in (AUTO, "gpu", "cuda") and torch.cuda.is_available()
    if not cuda:
        return "32-true"
    # Compute capability 8.0 (Ampere) is where bfloat16 is native; `torch.cuda.is_bf16_supported()` is also true on
    # T4 and V100 since torch 2.3, where bfloat16 is emulated and slower than fp16.
    major, _ = torch.cuda.get_device_capability()
    return "bf16-mixed" if major >= 8 else "16-mixed"


def resolve(cfg: DictConfig) -> None:
    """Replace `trainer.precision: auto` (or null) with `auto_precision`, before the trainer and config.yaml are
    written, so the resolved value is what runs and what is saved."""
    if cfg.trainer.get("precision") in (None, AUTO):
        with open_dict(cfg):
            cfg.trainer.precision = auto_precision(str(cfg.trainer.get("accelerator", AUTO)))


def describe(trainer: pl.Trainer, datamodule: ImageFolderDataModule) -> dict[str, Any]:
    """What the run uses: device kind and name, device count, precision, loader workers and CPUs, pinned memory."""
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    workers, pin = datamodule.loader_settings(trainer.num_devices, device.type == "cuda")
    return {
        "accelerator": device.type,
        "device": name,
        "devices": trainer.num_devices,
        "precision": str(trainer.precision),
        "loader_workers": workers,
        "usable_cpus": usable_cpus(),
        "pin_memory": pin,
    }


def one_line(hardware: dict[str, Any]) -> str:
    h = hardware
    return (
        f"Hardware: {h['devices']} x {h['device']} ({h['accelerator']}), precision {h['precision']}, "
        f"{h['loader_workers']} loader workers per device of {h['usable_cpus']} usable CPUs, "
        f"pin_memory={h['pin_memory']}"
    )
