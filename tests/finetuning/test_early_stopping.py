"""Phase-aware early stopping, and the test metrics coming from the best checkpoint, not the last epoch."""

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose_train, folder_overrides, tiny_data, tiny_model, tiny_trainer
from lightning.pytorch.callbacks import EarlyStopping

from tl_lightning.app.train import run
from tl_lightning.finetuning.early_stopping import PhaseAwareEarlyStopping
from tl_lightning.finetuning.unfreezing import LayerFinetuning, gradual
from tl_lightning.models.module import TransferClassifier


def stopped_at(stopper, schedule: LayerFinetuning, split_folder: Path) -> int:
    model = tiny_model(lr=0.0)  # nothing learns, so val/acc never improves after the first epoch
    callbacks = [schedule, stopper]
    trainer = tiny_trainer(max_epochs=12, callbacks=callbacks)
    trainer.fit(model, tiny_data(split_folder, model))
    return trainer.current_epoch


def test_plain_early_stopping_ends_the_run_in_the_frozen_phase(split_folder: Path):
    stopper = EarlyStopping(monitor="val/acc", mode="max", patience=1)
    assert stopped_at(stopper, LayerFinetuning(milestones={3: "all"}), split_folder) == 2


def test_phase_aware_early_stopping_waits_for_the_unfreeze_and_its_patience(split_folder: Path):
    schedule = LayerFinetuning(milestones={3: "all"})
    stopper = PhaseAwareEarlyStopping(monitor="val/acc", mode="max", patience=1, schedule=schedule)
    assert stopped_at(stopper, schedule, split_folder) == 5  # unfreeze at 3, one epoch of patience, stop after epoch 4
    assert stopper.stopped_epoch == 4


class ScriptedScore(pl.Callback):
    """Report `val/scripted` from a script, one value per epoch: a run whose score dips at the unfreeze."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def on_validation_end(self, trainer, pl_module):
        trainer.callback_metrics["val/scripted"] = torch.tensor(self.scores[trainer.current_epoch])


# Frozen epochs 0-2 peak at 0.9; the unfreeze at 3 drops to 0.3, then the score climbs to 0.86 by epoch 9 and stays.
DIP_AND_CLIMB = [0.9, 0.8, 0.8, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.86, 0.86, 0.86, 0.86, 0.86, 0.86]


@pytest.mark.parametrize(("restart", "last_epoch"), [(True, 11), (False, 5)])
def test_patience_counts_from_the_unfreeze_so_a_climbing_run_is_not_stopped(split_folder, restart, last_epoch, caplog):
    caplog.set_level(logging.INFO, logger="tl_lightning")
    schedule = LayerFinetuning(milestones={3: "all"})
    stopper = PhaseAwareEarlyStopping(
        monitor="val/scripted", mode="max", patience=2, restart_at_unfreeze=restart, schedule=schedule
    )
    callbacks = [schedule, ScriptedScore(DIP_AND_CLIMB), stopper]
    trainer = tiny_trainer(max_epochs=len(DIP_AND_CLIMB), callbacks=callbacks)
    model = tiny_model(lr=0.0)
    trainer.fit(model, tiny_data(split_folder, model))
    # Restarted: best since the unfreeze is 0.86 at epoch 9, and 10, 11 bring nothing. Not restarted: the frozen
    # 0.9 is never beaten, so the earliest allowed stop (unfreeze + patience = epoch 5) ends it mid-climb.
    assert stopper.stopped_epoch == last_epoch
    assert stopper.best_score.item() == pytest.approx(0.86 if restart else 0.9)
    said = [r.getMessage() for r in caplog.records if "patience counts from the last unfreeze" in r.getMessage()]
    assert said == (["early stopping: patience counts from the last unfreeze (epoch 3) on"] if restart else [])


def test_the_restart_survives_a_checkpoint_so_a_resumed_run_does_not_restart_again():
    stopper = PhaseAwareEarlyStopping(monitor="val/acc", mode="max", patience=2)
    stopper.restart(3)
    stopper.best_score, stopper.wait_count = torch.tensor(0.7), 1
    resumed = PhaseAwareEarlyStopping(monitor="val/acc", mode="max", patience=2)
    resumed.load_state_dict(stopper.state_dict())
    assert (resumed.restarted_at, resumed.best_score.item(), resumed.wait_count) == (3, pytest.approx(0.7), 1)


def test_the_last_change_counts_only_within_the_run_and_the_model_groups(split_folder: Path):
    model = tiny_model()
    assert gradual(every=2, start=1).last_change_epoch(model, max_epochs=30) == 11  # 6 groups: epochs 1..11
    assert gradual(every=2, start=1).last_change_epoch(model, max_epochs=8) == 7
    assert LayerFinetuning(milestones={}).last_change_epoch(model, max_epochs=8) == 0


class RuinLastEpoch(pl.Callback):
    """Zero the backbone at the start of the last epoch, so the last weights are the worst."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for p in pl_module.backbone.parameters():
                    p.zero_()


def test_metrics_come_from_the_best_checkpoint_not_the_ruined_last_epoch(flat_folder: Path, tmp_path: Path):
    unlimited = [f"trainer.limit_{stage}_batches=null" for stage in ("train", "val", "test")]
    overrides = [
        *folder_overrides(flat_folder, tmp_path),
        *unlimited,
        "trainer.max_epochs=8",
        "data.batch_size=4",
        "model.lr=1e-2",
        "finetuning=full",
        "+callbacks.ruin._target_=test_early_stopping.RuinLastEpoch",
    ]
    metrics = run(compose_train(overrides))
    assert metrics["checkpoint"].endswith("model.ckpt")
    last = TransferClassifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    dm = tiny_data(flat_folder, data_config=last.data_config)
    ruined = tiny_trainer().test(last, dm, verbose=False)[0]["test/acc"]
    assert metrics["test/acc"] > ruined
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == pytest.approx(metrics["test/acc"])


@pytest.mark.parametrize("data", ["digits", "folder", "plants"])
def test_early_stopping_can_end_a_run_with_each_presets_own_schedule_and_budget(data: str):
    from hydra.utils import instantiate

    cfg = compose_train([f"data={data}", "paths.output_dir=unused"])
    stopper, finetuning = instantiate(cfg.callbacks.early_stopping), instantiate(cfg.callbacks.finetuning)
    trainer = tiny_trainer(max_epochs=cfg.trainer.max_epochs, callbacks=[finetuning, stopper])
    trainer.strategy.connect(tiny_model())
    assert stopper.earliest_stop(trainer) < cfg.trainer.max_epochs
