"""An exponential moving average of the weights, scored beside the raw weights at every validation.

Lightning's `EMAWeightAveraging` swaps the averaged weights in for validation, so the raw weights are never
scored; here both are: `val/acc` for the raw weights, `val/acc_ema` for the average. The average is timm's
`ModelEmaV3` over the backbone and head only (a copy of the whole LightningModule would copy its trainer), and
is saved in the checkpoint's callback state, so a resumed run continues it.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from tl_lightning.models.features import Features


class EMAEvaluation(pl.Callback):
    """Keep an EMA of `backbone` and `head` and log its validation accuracy as `val/acc_ema`.

    Args:
        decay: EMA decay per optimizer step.
        warmup: ramp the decay up over the first steps (timm's `use_warmup`), so an early EMA is not
            dominated by the initial weights.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.ema: ModelEmaV3 | None = None
        self._source: nn.Module | None = None
        self._accuracy: MulticlassAccuracy | None = None
        self._pending: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.ema is not None:
            return
        self._source = nn.Sequential(pl_module.backbone, pl_module.head)  # references, not copies
        self.ema = ModelEmaV3(self._source, decay=self.decay, use_warmup=self.warmup)
        self._accuracy = MulticlassAccuracy(pl_module.hparams.num_classes, average="micro")  # as `val/acc`
        if self._pending is not None:
            self.ema.module.load_state_dict(self._pending)
            self._pending = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.ema.update(self._source, step=trainer.global_step)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        x, y = batch
        self._accuracy.to(y.device)
        ema = self.ema.module.to(y.device)
        with torch.no_grad():  # a `Features` batch (frozen phase, feature cache) goes through the head alone
            self._accuracy.update(ema[1](x.tensor) if isinstance(x, Features) else ema(x), y)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("val/acc_ema", self._accuracy.compute(), prog_bar=True)
        self._accuracy.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.module.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ema" not in state_dict:
            return
        if self.ema is None:
            self._pending = state_dict["ema"]
        else:
            self.ema.module.load_state_dict(state_dict["ema"])
