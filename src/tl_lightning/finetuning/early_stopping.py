"""Early stopping that knows the finetuning schedule.

Plain early stopping can end a run during the frozen phase, when the head has plateaued but the backbone has
never trained. This one never stops for lack of improvement before the last scheduled unfreeze has had
`patience` epochs of its own; stops for other reasons (a non-finite metric, a divergence or stopping
threshold) still apply at once.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from tl_lightning.finetuning.unfreezing import LayerFinetuning

log = logging.getLogger(__name__)


class PhaseAwareEarlyStopping(EarlyStopping):
    """`EarlyStopping` whose patience only runs out after the last unfreeze plus `patience` epochs.

    Takes `EarlyStopping`'s arguments. Without a `LayerFinetuning` callback in the trainer it behaves as
    `EarlyStopping`.

    >>> PhaseAwareEarlyStopping(monitor="val/acc", mode="max", patience=10).patience
    10
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._earliest = 0

    def earliest_stop(self, trainer: pl.Trainer) -> int:
        """The first epoch at which running out of patience may stop the run."""
        finetuning = next((c for c in trainer.callbacks if isinstance(c, LayerFinetuning)), None)
        if finetuning is None:
            return 0
        return finetuning.last_change_epoch(trainer.lightning_module, trainer.max_epochs) + self.patience

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        self._epoch, self._earliest = trainer.current_epoch, self.earliest_stop(trainer)
        super()._run_early_stopping_check(trainer)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        out_of_patience = should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        if out_of_patience and self._epoch < self._earliest:
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            return False, None
        return should_stop, reason
