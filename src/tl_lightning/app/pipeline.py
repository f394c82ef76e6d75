"""A whole run from plain objects: fit, calibrate the model the run keeps and write it once (`model.ckpt`),
evaluate the test split once, write the run folder. No Hydra here: `app.train` builds the objects from the config
and calls `train_and_evaluate`, and a notebook or another project can call it with objects of its own.

Under DDP every rank calls it (Lightning relaunches the script into the same run folder); only rank 0 writes files.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tl_lightning.app import hardware
from tl_lightning.app.trackers import log_run_files
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.evaluation.abstention import answered, choose_threshold, per_class_accuracy
from tl_lightning.evaluation.calibration import fit_temperature
from tl_lightning.evaluation.report import log_report, summary_table, write_metrics, write_report
from tl_lightning.finetuning.probe_floor import ProbeFloor
from tl_lightning.finetuning.resume import Preemption
from tl_lightning.models.heads import scaled_softmax
from tl_lightning.models.metrics import MIN_CALIBRATION_IMAGES
from tl_lightning.models.module import TransferClassifier
from tl_lightning.models.outputs import predict_outputs
from tl_lightning.utils import atomic_path

log = logging.getLogger(__name__)

MODEL_FILE = "model.ckpt"  # the run's model: the kept checkpoint's weights with their temperature and abstention rule


def train_and_evaluate(
    model: TransferClassifier,
    datamodule: ImageFolderDataModule,
    trainer: pl.Trainer,
    out: str | Path,
    ckpt_path: str | None = None,
    recipe_seconds: float = 0.0,
) -> dict[str, Any]:
    """Fit; keep the best epoch's checkpoint, or the probe's where `ProbeFloor` kept it; fit its temperature on
    validation and write it as `model.ckpt` beside the checkpoints; evaluate the test split; write the run folder.

    `out` gets `split.csv`, `audit.json`, `metrics.json` (`checkpoint` names `model.ckpt`, `kept_from` the
    checkpoint it was made from), and `report.md` with its files under `report/` (the checkpoints go where the
    trainer's `ModelCheckpoint` callbacks put them). `recipe_seconds`, the time the caller
    spent deciding the recipe (measuring the data), is reported beside `fit_seconds`. Returns the metrics.
    """
    out = Path(out)
    model.connect_data(datamodule)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        datamodule.save_split(out / "split.csv")
        if datamodule.audit_report is not None:
            datamodule.audit_report.save(out / "audit.json")
            log.info(datamodule.audit_report.summary())

    validation = sum(datamodule.class_counts("val"))
    on_loss = validation < model.hparams.get("score_accuracy_from", 0)
    if on_loss or validation < MIN_CALIBRATION_IMAGES:
        chosen = "so checkpoints are chosen on the validation loss" if on_loss else "yet checkpoints are chosen on it"
        temperature = " and the temperature stays 1" if validation < MIN_CALIBRATION_IMAGES else ""
        log.warning(
            "The validation split has %d images: accuracy on it moves in steps of %.0f%%, too coarse to select a "
            "checkpoint on, %s%s. Give it more images (data.val_fraction, or a val/ folder) for a reliable choice.",
            validation,
            100 / max(1, validation),
            chosen,
            temperature,
        )
    used = hardware.describe(trainer, datamodule)
    log.info(hardware.one_line(used))
    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        stopped(trainer, out)
    fit_seconds = time.perf_counter() - started

    floor = probe_floor(trainer)
    kept = kept_checkpoint(trainer, floor)
    metrics: dict[str, Any] = {"fit_seconds": round(fit_seconds, 1), "recipe_seconds": round(recipe_seconds, 1)}
    metrics |= {f"hardware/{key}": value for key, value in used.items()}
    if (best_val := trainer.callback_metrics.get("val/acc_best")) is not None:
        metrics["val/acc_best"] = float(best_val)  # what sweeps should optimise: never the test split
    metrics |= probe_floor_metrics(floor)
    refitted = floor is not None and floor.kept and floor.refitted
    temperature, rule = calibrate(model, datamodule, trainer, kept, fit=not refitted)
    metrics["calibration/temperature"] = temperature
    metrics |= {f"abstention/{key}": rule.get(key) for key in ("threshold", "target_accuracy")}
    metrics |= {"abstention/val_accuracy": rule.get("accuracy"), "abstention/val_share": rule.get("share")}
    model_file = Path(kept).parent / MODEL_FILE if kept else None
    if model_file is not None:
        if trainer.is_global_zero:
            keep_model(model, kept, model_file, rule)
        trainer.strategy.barrier("keep_model")  # every rank reads it next
    metrics["checkpoint"] = str(model_file) if model_file else "final weights (no checkpoint written)"
    metrics["kept_from"] = kept or "final weights"
    if datamodule.has_test:
        test = predict_outputs(trainer, model, datamodule.eval_dataloader("test"))  # every rank: its shard
        if trainer.is_global_zero:
            refit = ", refitted on train and val" if refitted else ""
            described = metrics["checkpoint"]
            if metrics.get("selected") == "linear probe":
                described += f" (the linear probe's model{refit}: no fine-tuned epoch beat it on validation)"
            metrics |= evaluate_test(model, datamodule, trainer, out, test, described, rule)
    else:
        log.warning("No test split: metrics.json holds the kept model's validation metrics instead.")
        metrics |= trainer.validate(model, datamodule=datamodule, ckpt_path=str(model_file) if model_file else None)[0]
    metrics["weights"] = model.weights_info.get("source")
    if trainer.is_global_zero:
        write_metrics(out / "metrics.json", metrics)
        log_run_files(trainer.loggers, out, str(model_file or ""))
        log.info("Run folder: %s\n%s", out, summary_table(metrics))
    return metrics


def stopped(trainer: pl.Trainer, out: Path) -> None:
    """After a SIGTERM (a scheduler's stop or preemption): `last.ckpt` is saved; hand over to the scheduler's requeue
    if one waits, else exit 143 (128 + SIGTERM, what a killed job reports, never the 0 of a finished run)."""
    for callback in trainer.callbacks:
        if isinstance(callback, Preemption):
            callback.hand_over()  # submitit: requeue this job and exit
    last = out / "checkpoints" / "last.ckpt"
    log.warning(
        "Stopped by SIGTERM after step %d; %s holds that step. Run the same command again (same output "
        "folder) to resume, or pass ckpt_path=%s.",
        trainer.global_step,
        last,
        last,
    )
    raise SystemExit(128 + signal.SIGTERM)


def probe_floor(trainer: pl.Trainer) -> ProbeFloor | None:
    """The run's `ProbeFloor`, where it fitted a probe."""
    return next((c for c in trainer.callbacks if isinstance(c, ProbeFloor) and c.probe_metrics), None)


def kept_checkpoint(trainer: pl.Trainer, floor: ProbeFloor | None) -> str:
    """The checkpoint the run keeps: the probe's where `ProbeFloor` kept it; else the best epoch's (of the
    checkpoint callback that monitors a score); else the last epoch's (no selection, as fastai's recipe); empty
    where no checkpoint was written."""
    if floor is not None and floor.kept:
        return floor.probe_path
    written = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path]
    written.sort(key=lambda callback: callback.monitor is None)  # a monitored one first
    return written[0].best_model_path if written else ""


def probe_floor_metrics(floor: ProbeFloor | None) -> dict[str, Any]:
    """The linear probe's validation metrics, and which model the run kept, when `ProbeFloor` ran."""
    if floor is None:
        return {}
    probe = {f"probe/{key.removeprefix('val/')}": value for key, value in floor.probe_metrics.items()}
    return probe | {"selected": "linear probe" if floor.kept else "fine-tuned"}


def calibrate(
    model: TransferClassifier, datamodule: ImageFolderDataModule, trainer: pl.Trainer, kept: str, fit: bool = True
) -> tuple[float, dict[str, Any]]:
    """Load the kept checkpoint's weights, fit a temperature on validation (logits through the trainer's predict
    loop, gathered on every rank, so every rank fits the same T) and set it on `model`; returns it with the
    abstention rule chosen at it (`abstention_rule`), for `keep_model` to record.

    `fit=False` keeps T = 1: for a model that has trained on validation (a kept probe refitted on it), which would
    look certain there; the probe's C, chosen by cross-validated log loss, calibrates it instead."""
    if kept:
        model.load_state_dict(torch.load(kept, map_location="cpu", weights_only=True)["state_dict"])
    logits, targets = predict_outputs(trainer, model, datamodule.eval_dataloader("val"))
    if fit:
        temperature = fit_temperature(logits, targets)
        log.info("Temperature scaling fitted on validation: T = %.3f", temperature)
    else:
        temperature = 1.0
        log.info("The kept probe has trained on validation too: its temperature stays 1 (its C calibrates it).")
    model.temperature.fill_(temperature)
    return temperature, abstention_rule(scaled_softmax(logits.float(), temperature), targets, model.class_names)


def keep_model(model: TransferClassifier, kept: str | Path, path: Path, abstention: dict[str, Any]) -> Path:
    """Write the run's model to `path`: the checkpoint `kept` with `model`'s weights and temperature as
    `calibrate` left them, and the `abstention` rule in its record (`models.checkpoint.read_record`). The one file
    prediction, export and serving take, written once, after fit, by this function alone (`ModelCheckpoint`
    writes the epochs' checkpoints, `ProbeFloor` its probe's), through a temporary file renamed into place."""
    checkpoint = torch.load(kept, map_location="cpu", weights_only=True, mmap=True)  # its weights are replaced
    checkpoint["state_dict"] = {key: value.cpu() for key, value in model.state_dict().items()}
    model.on_save_checkpoint(checkpoint)  # the module's own record: classes, preprocessing, temperature
    checkpoint["tl_lightning"]["abstention"] = abstention
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def abstention_rule(probabilities: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """When to say "not sure", chosen on validation, with each class's validation accuracy (what the serving page
    shows beside an answer)."""
    rule = choose_threshold(probabilities, targets)
    if rule.accuracy is None:
        log.warning(
            "No share of the validation images reaches %.0f%% accuracy: the model will always say 'not sure' when "
            "served with an answer threshold.",
            100 * rule.target_accuracy,
        )
    else:
        log.info(
            "Answers below %.3f probability are 'not sure': %.1f%% of validation images are answered, %.1f%% of them "
            "right.",
            rule.threshold,
            100 * rule.share,
            100 * rule.accuracy,
        )
    return rule.to_dict() | {"class_val_accuracy": per_class_accuracy(probabilities, targets, class_names)}


def evaluate_test(
    model: TransferClassifier,
    datamodule: ImageFolderDataModule,
    trainer: pl.Trainer,
    out: Path,
    test: tuple[torch.Tensor, torch.Tensor],
    checkpoint: str,
    abstention: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The module's test metrics and the report, both from the same pass over the whole test split (`test`: its
    logits and targets in split order). `checkpoint` is the model as the report names it; with an `abstention`
    rule, what its threshold, chosen on validation, gives on images it never saw."""
    logits, targets = test
    metrics = model.score(logits, targets, "test")
    if abstention is not None:
        probabilities = scaled_softmax(logits.float(), float(model.temperature))
        accuracy, share = answered(probabilities, targets, abstention["threshold"])
        metrics["test/answered_share"] = share
        if accuracy is not None:  # loggers take numbers only
            metrics["test/answered_accuracy"] = accuracy
    files = [path for path, _ in datamodule.samples("test")]
    channels = int(model.data_config["input_size"][0])
    scalars = write_report(
        out,
        logits,
        targets,
        model.class_names,
        files,
        float(model.temperature),
        channels,
        checkpoint=checkpoint,
        read_image=datamodule.read_image,
    )
    log_report(trainer.loggers, metrics | scalars, out, trainer.global_step)
    return metrics | scalars
