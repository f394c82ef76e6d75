"""Early stopping that knows the finetuning schedule.

Plain early stopping can end a run during the frozen phase, when the head has plateaued but the backbone has
never trained. This one never stops for lack of improvement before the last scheduled unfreeze has had
`patience` epochs of its own; stops for other reasons (a non-finite metric, a divergence or stopping
threshold) still apply at once.

Nor does it measure the fine-tuned phase against the frozen one: at the last unfreeze the best score so far is
forgotten, so patience counts epochs without improvement *since the unfreeze*. A backbone that starts to move
first loses accuracy, then climbs back, and the frozen phase's better score would run out its patience
mid-climb. Stopping a run that is still climbing saves time but
not accuracy; which epoch's model is kept stays the checkpoint callback's decision, over the whole run.
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
    """`EarlyStopping` whose patience only runs out after the last unfreeze of `schedule` plus `patience` epochs.

    Takes `EarlyStopping`'s arguments, the run's finetuning callback as `schedule` (without one it behaves as
    `EarlyStopping`), and `restart_at_unfreeze`: forget the best score at the last unfreeze, so patience counts
    from it (``False``: from the best of the whole run, as `EarlyStopping` does).

    >>> from tl_lightning.finetuning.unfreezing import LayerFinetuning
    >>> schedule = LayerFinetuning(milestones={5: "all"})
    >>> PhaseAwareEarlyStopping(monitor="val/acc", mode="max", patience=10, schedule=schedule).patience
    10
    """

    def __init__(
        self, *args, schedule: LayerFinetuning | None = None, restart_at_unfreeze: bool = True, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = schedule
        self.restart_at_unfreeze = restart_at_unfreeze
        self._epoch = 0
        self._earliest = 0
        self.restarted_at: int | None = None

    def earliest_stop(self, trainer: pl.Trainer) -> int:
        """The first epoch at which running out of patience may stop the run."""
        if self.schedule is None:
            return 0
        return self.schedule.last_change_epoch(trainer.lightning_module, trainer.max_epochs) + self.patience

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        self._epoch, self._earliest = trainer.current_epoch, self.earliest_stop(trainer)
        last_change = self._earliest - self.patience
        if self.restart_at_unfreeze and 0 < last_change <= self._epoch and self.restarted_at is None:
            self.restart(last_change)
            if trainer.is_global_zero:  # every DDP rank restarts; one says so
                log.info("early stopping: patience counts from the last unfreeze (epoch %d) on", last_change)
        super()._run_early_stopping_check(trainer)

    def restart(self, epoch: int) -> None:
        """Forget the best score and the epochs waited, so the phase that starts at `epoch` is measured alone."""
        worst = torch.tensor(torch.inf if self.monitor_op == torch.lt else -torch.inf)
        self.best_score, self.wait_count, self.restarted_at = worst, 0, epoch

    def state_dict(self) -> dict:
        return super().state_dict() | {"restarted_at": self.restarted_at}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.restarted_at = state_dict.get("restarted_at")

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        out_of_patience = should_stop and self.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
        if out_of_patience and self._epoch < self._earliest:
            self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
            return False, None
        return should_stop, reason
