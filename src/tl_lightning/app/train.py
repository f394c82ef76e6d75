"""The command line's training entry: Hydra config in, objects out, converted once.

Only the app layer touches the `DictConfig`. `prepare` checks the config and turns it into a datamodule and a model,
`build_trainer` into callbacks, loggers and a trainer (each a plain class that works without Hydra), and
`pipeline.train_and_evaluate` runs them. `run` returns the metrics so tests call it in-process and Hydra sweepers
can optimise one of them.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf, open_dict

from tl_lightning.app import hardware
from tl_lightning.app._common import user_errors
from tl_lightning.app.checks import check_command_line, check_config, check_resume, check_task
from tl_lightning.app.pipeline import train_and_evaluate
from tl_lightning.app.recipe import apply_recipe, plan_recipe
from tl_lightning.app.run_folder import check_not_finished, check_same_run, hold
from tl_lightning.app.trackers import log_config
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.evaluation.probe import linear_probe
from tl_lightning.evaluation.report import write_metrics
from tl_lightning.finetuning.lr_finder import lr_range_test, plot_range_tests
from tl_lightning.finetuning.sync_batchnorm import TimmSyncBatchNorm
from tl_lightning.models.checkpoint import AtomicCheckpointIO
from tl_lightning.models.losses import balanced_class_weights
from tl_lightning.models.module import TransferClassifier
from tl_lightning.utils import BadValue, write_text

log = logging.getLogger(__name__)

CONF_ENV = "TL_LIGHTNING_CONF"


@dataclass
class Job:
    """What a config builds before any training: where it writes, the data and the model, connected."""

    out: Path
    datamodule: ImageFolderDataModule
    model: TransferClassifier
    recipe_seconds: float = 0.0  # spent measuring the data for the recipe's choices
    resume_from: str | None = None  # the checkpoint a training run goes on from


def prepare(cfg: DictConfig) -> Job:
    """Seed, prepare the data, fill the recipe's `auto` values from it, write the config, and build the model for
    it (the seam connected). The caller has checked the config (`check_config`)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    scan = instantiate(cfg.data)
    scan.prepare_data()
    if scan.num_classes < 2:
        raise BadValue(
            f"'{scan.root}' has one class ({scan.class_names[0]}): a classifier needs at least "
            "two class folders. Add a folder of images for each other class."
        )
    if cfg.get("ckpt_path"):
        check_resume(cfg.ckpt_path, scan.class_names)
    recipe = plan_recipe(cfg, scan)
    apply_recipe(cfg, recipe)
    datamodule = instantiate(cfg.data) if recipe.choices else scan  # built from the decided values
    datamodule.prepare_data()
    overrides: dict[str, Any] = {}
    if cfg.model.get("imbalance", {}).get("class_weights") == "balanced":
        weights = balanced_class_weights(datamodule.class_counts()).tolist()
        overrides["imbalance"] = OmegaConf.to_container(cfg.model.imbalance) | {"class_weights": weights}
    model = instantiate(
        cfg.model, num_classes=datamodule.num_classes, class_names=datamodule.class_names, _convert_="all", **overrides
    )
    model.connect_data(datamodule)
    resuming = resume_from(cfg, out) if cfg.get("task", "train") == "train" else None
    previous = _config_of(resuming)
    if resuming and previous is not None and cfg.get("resume") != "force":
        check_same_run(previous, OmegaConf.to_container(cfg, resolve=True), resuming)
    if rank_zero_only.rank == 0:  # what ran: the recipe's choices are in the config, their reasons above it
        reasons = "".join(f"# {line}\n" for line in recipe.lines())
        write_text(out / "config.yaml", reasons + OmegaConf.to_yaml(cfg, resolve=True))
    return Job(out, datamodule, model, recipe.seconds, resuming)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The trainer with the config's callbacks and loggers; `trainer.sync_batchnorm` through timm's converter.

    Settings that Lightning refuses (an accelerator that is not there, a precision or strategy it does not know)
    end in one sentence with Lightning's reason: they are the user's to change, not our bug."""
    callbacks = build_callbacks(cfg.get("callbacks") or {})
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    plugins: list[Any] = [AtomicCheckpointIO()]  # every checkpoint renamed into place, whole
    layer_sync = {}
    if cfg.trainer.get("sync_batchnorm"):  # Lightning's own converter would drop timm's fused activations
        layer_sync = {"sync_batchnorm": False}
        plugins.append(TimmSyncBatchNorm())
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **layer_sync)
    except InstantiationException as err:
        cause = err.__cause__
        refused = isinstance(cause, (ValueError, TypeError, ImportError, MisconfigurationException))
        if not (refused and _raised_in_lightning(cause)):
            raise
        chosen = ", ".join(f"trainer.{key}={cfg.trainer.get(key)}" for key in TRAINER_CHOICES if key in cfg.trainer)
        reason = str(cause).strip().rstrip(".")
        raise BadValue(
            f"Lightning refused the trainer settings ({chosen}): {reason}. "
            "Change them on the command line (python train.py --cfg job shows them all)."
        ) from None


def build_callbacks(configs: DictConfig | dict) -> list[Any]:
    """The config's callbacks, in order. The finetuning schedule is built first and handed to each callback whose
    config has a `schedule` key, so every callback that follows the schedule follows the same object."""
    configs = {name: config for name, config in configs.items() if config is not None}
    schedule = instantiate(configs["finetuning"]) if "finetuning" in configs else None
    callbacks = []
    for name, config in configs.items():
        if name == "finetuning":
            callbacks.append(schedule)
        elif "schedule" in config:
            callbacks.append(instantiate(config, schedule=schedule))
        else:
            callbacks.append(instantiate(config))
    return callbacks


TRAINER_CHOICES = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def _raised_in_lightning(error: BaseException) -> bool:
    """Whether Lightning's own argument checks raised `error` (its last frame is in the lightning package)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}lightning{os.sep}" in frames[-1].filename


def run(cfg: DictConfig) -> dict[str, Any]:
    """`task=train`: fit, calibrate, test and report (`pipeline.train_and_evaluate`); returns the metrics. The
    trainer is built first, so that settings Lightning refuses are answered before the data and weights load."""
    hardware.resolve(cfg)
    check_config(cfg)
    trainer = build_trainer(cfg)
    out = Path(cfg.paths.output_dir)
    with hold(out, writer=rank_zero_only.rank == 0):
        if not cfg.get("ckpt_path") and rank_zero_only.rank == 0:  # an explicit checkpoint continues a run on purpose
            check_not_finished(out, cfg.get("resume"))
        return _train(cfg, trainer)


def _train(cfg: DictConfig, trainer: pl.Trainer) -> dict[str, Any]:
    job = prepare(cfg)
    log_config(trainer.loggers, OmegaConf.to_container(cfg, resolve=True), job.datamodule.class_names)
    if job.resume_from and not cfg.get("ckpt_path"):
        where = check_resume(job.resume_from, job.datamodule.class_names)
        log.info("Resuming the interrupted run in %s from %s (%s)", job.out, job.resume_from, where)
    return train_and_evaluate(job.model, job.datamodule, trainer, job.out, job.resume_from, job.recipe_seconds)


def resume_from(cfg: DictConfig, out: Path) -> str | None:
    """`ckpt_path` if given; else the `last.ckpt` of an unfinished run in this output folder (no metrics.json), so
    a job that a scheduler stopped and started again (SLURM requeue through submitit keeps its folder) goes on
    where it was instead of starting over."""
    if cfg.get("ckpt_path"):
        return cfg.ckpt_path
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file() and not (out / "metrics.json").exists():
        return str(last)
    return None


def _config_of(checkpoint: str | None) -> Path | None:
    """The config.yaml of the run folder `checkpoint` sits in (`<run>/checkpoints/<name>.ckpt`), if there is one."""
    if checkpoint is None:
        return None
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    return config if config.is_file() else None


def probe(cfg: DictConfig) -> dict[str, Any]:
    """`task=probe`: a linear probe of the frozen pretrained features; writes `probe.json` with the verdict.

    Features are cached under `paths.cache_dir/features`, so probing again (another `probe.c`) costs seconds.
    """
    hardware.resolve(cfg)
    check_config(cfg)
    with open_dict(cfg):  # features are cached for later probes: every image, even under debug=fast
        cfg.trainer.limit_predict_batches = None
    trainer = build_trainer(cfg)  # the features come through its predict loop: its device and precision
    with hold(Path(cfg.paths.output_dir), writer=rank_zero_only.rank == 0):
        job = prepare(cfg)
        job.datamodule.setup("fit")
        cache = Path(cfg.paths.cache_dir) / "features"
        result = linear_probe(job.model, job.datamodule, cache, c=cfg.probe.c, trainer=trainer).to_dict()
        write_metrics(job.out / "probe.json", result)
    scores = ", ".join(f"{split} {value:.4f}" for split, value in result["accuracy"].items())
    log.info(
        "Linear probe accuracy: %s\n%s\nStart with: python train.py %s",
        scores,
        result["interpretation"],
        result["recommendation"],
    )
    return result


def find_lr(cfg: DictConfig) -> dict[str, Any]:
    """`task=lr_find`: a range test for the head on the frozen backbone, and for the last unfrozen phase.

    Writes `lr_find.png` and `lr_find.json` (suggestions and the `model.lr=...` override for the next run).
    """
    hardware.resolve(cfg)
    check_config(cfg)
    with hold(Path(cfg.paths.output_dir), writer=rank_zero_only.rank == 0):
        return _find_lr(cfg)


def _find_lr(cfg: DictConfig) -> dict[str, Any]:
    job = prepare(cfg)
    finetuning = instantiate(cfg.callbacks.finetuning)
    # The run's trainer settings (device, strategy, precision, clipping): the steps are training's own.
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "_target_"}
    options = dict(cfg.lr_find) | {"trainer_options": trainer | {"sync_batchnorm": False}}
    data = job.datamodule
    tests = [lr_range_test(job.model, data, finetuning, epoch=0, phase="frozen phase", **options)]
    last = finetuning.last_change_epoch(job.model, cfg.trainer.max_epochs)
    if last > 0:
        tests.append(lr_range_test(job.model, data, finetuning, epoch=last, phase=f"from epoch {last}", **options))
    plot_range_tests(tests, job.out / "lr_find.png")
    chosen = tests[-1].suggestion
    diverged = [t for t in tests if not math.isfinite(t.suggestion)]
    override = None if diverged else f"model.lr={chosen:.2e}"
    result = {f"lr_find/{t.phase}": t.suggestion for t in tests} | {"override": override}
    write_metrics(job.out / "lr_find.json", result)
    if diverged:  # the curve is kept (lr_find.png): where it broke off is what the user needs to see
        test = diverged[0]
        raise BadValue(
            f"The LR range test ({test.phase}) diverged after {len(test.lrs)} steps, at model.lr={test.lrs[-1]:.2e}, "
            f"too early to suggest a learning rate (curve in {job.out / 'lr_find.png'}). Start it lower "
            f"(lr_find.min_lr, now {cfg.lr_find.min_lr:g}) or end it lower "
            f"(lr_find.max_lr, now {cfg.lr_find.max_lr:g})."
        )
    log.info("LR range test (model.lr is %s): %s", cfg.model.lr, result)
    log.info("Next run: python train.py %s", result["override"])
    return result


def main(cfg: DictConfig) -> float | None:
    """What `python train.py` runs for each job: the config's `task`, returning `optimized_metric` to sweepers.

    A `UserError` (bad input, missing data) ends the job with its one sentence and exit status 2.
    """
    with user_errors():
        return _task(cfg)


def _task(cfg: DictConfig) -> float | None:
    check_task(cfg.get("task"))  # each task resolves the hardware and checks the config once, itself
    if cfg.task == "lr_find":
        find_lr(cfg)
        return None
    if cfg.task == "probe":
        return probe(cfg)["accuracy"]["val"]
    metrics = run(cfg)
    value = metrics.get(cfg.get("optimized_metric"))
    return float(value) if value is not None else None


def config_dir() -> Path:
    """The Hydra config folder: `$TL_LIGHTNING_CONF` if set (a whole replacement: a copy of ours, edited), else the
    configs shipped in the package (`tl_lightning.conf`: the repository's conf/, in a checkout or an install). To
    add config options of your own beside ours (`data=my_set`), keep ours and pass `--config-dir MY_CONF`."""
    if not os.environ.get(CONF_ENV):
        return Path(str(importlib.resources.files("tl_lightning.conf")))
    folder = Path(os.environ[CONF_ENV])
    if not (folder / "train.yaml").is_file():
        raise SystemExit(
            f"{CONF_ENV}={folder} holds no train.yaml. Point it at a copy of tl_lightning's conf/ folder, or unset "
            "it to use the configs that ship with the package (add your own with --config-dir)."
        )
    return folder.resolve()


def run_hydra(overrides: list[str]) -> None:
    """`main` under Hydra with `overrides`, as `python train.py` runs it (`tl-lightning train` comes here)."""
    # Lightning's DDP launcher starts the other ranks by re-running sys.argv[0] with Hydra's overrides: point it
    # at this file, which runs the same entry as a script.
    sys.argv = [__file__, *overrides]
    check_command_line(config_dir(), overrides)
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(main)()


if __name__ == "__main__":  # how `tl-lightning train` relaunches itself for DDP ranks
    run_hydra(sys.argv[1:])
