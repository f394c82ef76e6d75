"""A network's outputs (a classifier's logits, a backbone's features) over a whole split, through the trainer's
own predict loop.

After `trainer.fit` returns, Lightning's teardown has moved the module back to the CPU; a plain loop over a split
would then run there, in fp32, on every DDP rank over the whole split. Going through `trainer.predict` instead
gives the passes after `fit` (calibration, the test split, the report) what training had: the trainer's device and
precision, its progress bar, and under DDP a shard per rank (Lightning's predict sampler repeats no sample), which
are gathered back here into the split's own order on every rank. Written here because Lightning returns only the
local rank's predictions, without their dataset indices; its `BasePredictionWriter` is the documented way to get
them.

Under a spawning strategy (`ddp_spawn`) the predictions stay in the spawned processes, so the pass runs as a
plain loop in this process, on the module's device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch import nn

from tl_lightning.models.features import extract_features


class _Outputs(pl.LightningModule):
    """`network(x)` in fp32 with the targets, as a predict step."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return self.network(x).float(), torch.as_tensor(y)


class _Collect(BasePredictionWriter):
    """Each batch's outputs and targets with their indices in the dataset, on the CPU."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        outputs, targets = prediction
        self.rows.append((torch.as_tensor(list(batch_indices)), outputs.cpu(), targets.cpu()))


def predict_outputs(trainer: pl.Trainer, network: nn.Module, loader: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets of every sample of `loader`, in the dataset's order, on every rank.

    `network` is any module (a `TransferClassifier` for logits, its `backbone` for features); the predict loop puts
    it in eval mode and restores each submodule's mode afterwards. Only the trainer's progress bar joins the pass:
    the fit's other callbacks (finetuning schedule, checkpoints, early stopping) belong to the fitted module.
    """
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        return extract_features(network, loader)
    writer = _Collect()
    fitting = trainer.callbacks  # the fit's own (schedule, checkpoints, early stopping) act on the fitted module
    trainer.callbacks = [*(c for c in fitting if isinstance(c, ProgressBar)), writer]
    try:
        trainer.predict(_Outputs(network), dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks = fitting
    rows = writer.rows
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    if not rows:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    indices, outputs, targets = (torch.cat(column) for column in zip(*rows, strict=True))
    order = indices.argsort()
    return outputs[order].clone(), targets[order].clone()  # plain tensors: callers may fit on them with autograd
