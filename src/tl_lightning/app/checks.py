"""Checks on a run's config before any work starts (no weights loaded, no image decoded), each failing with one
sentence that names the setting, says why and what to give instead.

`check_jobs` runs them on every job a command line would start, before Hydra starts any: `--cfg job` (which runs no
job) and a multirun then fail at once too, not after the first jobs of a sweep have trained.

Written by hand rather than as a Hydra structured-config schema: a schema rejects `model.lr=abc` with a type error
about a dataclass field, not with what to do; and ranges (a positive LR, an image no smaller than the backbone's
stride) are beyond what OmegaConf's types express.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tl_lightning.app._common import user_errors
from tl_lightning.app.command_line import fixed_overrides, hydra_arguments, sweep_jobs
from tl_lightning.utils import BadValue, UserError

TASKS = ("train", "lr_find", "probe")
AUTO = "auto"  # a config value the recipe fills from the data (`app.recipe`)


def check_config(cfg: DictConfig, output_dir: bool = True) -> None:
    """Every setting that can be judged from the config alone; see the module docstring. `output_dir=False` where
    Hydra has not made the job's folder yet (`check_jobs`). The checks that need no model come first, and the
    model's modules are imported only after them: torch and timm take seconds to import, and a mistyped number
    should be answered at once."""
    check_task(cfg.get("task"))
    model = cfg.model
    check_positive_number("model.lr", model.get("lr"))
    if model.get("lr_mult") != AUTO:
        check_positive_number("model.lr_mult", model.get("lr_mult"), minimum=1.0)
    for i, factor in enumerate(model.get("lr_factors") or []):
        check_positive_number(f"model.lr_factors[{i}]", factor)
    check_positive_int("data.batch_size", cfg.data.get("batch_size"))
    if cfg.data.get("num_workers") is not None:
        check_whole_number("data.num_workers", cfg.data.num_workers, "null (one per CPU, at most 8) or 0 (no workers)")
    if cfg.get("seed") is not None:
        check_whole_number("seed", cfg.seed, "another whole number, or null for no fixed seed")
    check_epochs(cfg.trainer.get("max_epochs"), cfg.get("ckpt_path"))
    if model.get("image_size") not in (None, AUTO):
        check_positive_int("model.image_size", model.image_size)
    if output_dir:
        check_writable("paths.output_dir", Path(cfg.paths.output_dir))
    if str(cfg.get("optimized_metric") or "").startswith("test/"):
        raise BadValue(
            f"optimized_metric={cfg.optimized_metric} would tune on the test split, whose score must stay an unbiased "
            "estimate: optimise a validation metric such as optimized_metric=val/acc_best."
        )

    from tl_lightning.models.backbones import check_backbone_name
    from tl_lightning.models.checkpoint import check_checkpoint_file
    from tl_lightning.models.groups import SPREADS

    if model.get("lr_spread") not in (AUTO, *SPREADS):
        raise BadValue(f"model.lr_spread={model.get('lr_spread')!r} is not one of: {AUTO}, {', '.join(SPREADS)}.")
    check_backbone_name(str(model.backbone))
    if model.get("image_size") not in (None, AUTO):
        check_image_size(str(model.backbone), int(model.image_size), model.get("backbone_kwargs") or {})
    if model.get("pool") not in (None, AUTO):
        check_pool(str(model.backbone), str(model.pool), model.get("backbone_kwargs") or {})
    if cfg.get("ckpt_path"):
        check_checkpoint_file(cfg.ckpt_path, "ckpt_path")


def check_jobs(config_dir: Path, argv: list[str]) -> None:
    """`check_config` on each job of `argv` (Hydra's command line: one run, a sweep (`-m`) or a printed config
    (`--cfg`)), composed as Hydra will compose them, before Hydra starts any and before Lightning is imported; a
    failure in a sweep names the job's overrides. With a sweeper that draws its values while sweeping (Optuna),
    only the fixed overrides are checked. A command line or config Hydra cannot read is left to Hydra, which
    reports it in its own words when it runs.
    """
    args = hydra_arguments(argv)
    if args is None or args.help or args.hydra_help or args.info or args.version or args.shell_completion:
        return
    config_dir = Path(args.config_dir or args.config_path or config_dir).resolve()
    name = args.config_name or "train"
    try:
        with initialize_config_dir(str(config_dir), version_base="1.3"):
            fixed = fixed_overrides(args.overrides)
            base = compose(name, overrides=fixed, return_hydra_config=True)
            if not (args.cfg or args.resolve):  # a run or sweep folder is about to be created
                key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
                check_writable(key, Path(str(OmegaConf.select(base, key))), create=False)
            jobs = [fixed]
            if args.multirun and base.hydra.sweeper._target_.endswith("BasicSweeper"):
                params = base.hydra.sweeper.get("params")
                jobs = sweep_jobs(args.overrides, OmegaConf.to_container(params) if params else {}) or jobs
            for job in jobs:
                try:
                    check_config(compose(name, overrides=job, return_hydra_config=True), output_dir=False)
                except UserError as err:
                    if len(jobs) == 1:
                        raise
                    values = " ".join(word for word in job if not all(word in other for other in jobs))
                    raise type(err)(f"In the sweep's job {values}: {err}") from None
    except (HydraException, OmegaConfBaseException):
        return


def check_task(task: Any) -> None:
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), TASKS, n=1, cutoff=0.5)
        hint = f" Did you mean task={close[0]}?" if close else ""
        raise BadValue(f"Unknown task '{task}'.{hint} Choose one of: {', '.join(TASKS)}.")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(str(value))
        except ValueError:
            raise BadValue(f"{name}={value!r} is not a number; give one such as {name}=1e-3.") from None
    return float(value)


def check_positive_number(name: str, value: Any, minimum: float | None = None) -> None:
    number = _number(name, value)
    if minimum is not None and number < minimum:
        raise BadValue(f"{name}={value} is below its minimum {minimum:g}; give a value of at least {minimum:g}.")
    if not number > 0 or number != number or number == float("inf"):
        raise BadValue(f"{name}={value} must be a positive finite number (e.g. {name}=1e-3).")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadValue(f"{name}={value!r} must be a whole number of at least 1.")


def check_whole_number(name: str, value: Any, instead: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadValue(f"{name}={value!r} must be a whole number of at least 0; give {instead}.")


def check_epochs(max_epochs: Any, ckpt_path: Any) -> None:
    if max_epochs == -1:  # Lightning's "until stopped": the warmup + cosine schedule needs an end
        raise BadValue(
            "trainer.max_epochs=-1 (train until stopped) leaves the learning-rate schedule without an end: give a "
            "number of epochs, e.g. trainer.max_epochs=30; early stopping can still end it sooner."
        )
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0:
        raise BadValue(
            f"trainer.max_epochs={max_epochs!r} must be a whole number of epochs, e.g. trainer.max_epochs=30."
        )
    if max_epochs == 0 and not ckpt_path:
        raise BadValue(
            "trainer.max_epochs=0 trains nothing, and there is no checkpoint to evaluate: give at least "
            "one epoch, or ckpt_path=<run>/checkpoints/model.ckpt to test a trained model."
        )


def check_image_size(backbone: str, size: int, kwargs: dict[str, Any]) -> None:
    """Refuse an input smaller than the backbone's total stride: its last feature map would be empty or 1 pixel of
    padding. The model is built on the meta device (no memory, no weights) to read timm's `feature_info`."""
    from tl_lightning.models.backbones import backbone_geometry

    native, stride, _ = backbone_geometry(backbone, kwargs)
    if size < stride:
        raise BadValue(
            f"model.image_size={size} is smaller than {backbone}'s total stride {stride}: its last feature map "
            f"would be empty. Use at least {stride} (its weights were trained at {native})."
        )


def check_pool(backbone: str, pool: str, kwargs: dict[str, Any]) -> None:
    """Refuse a pooling the backbone cannot take with its pretrained weights (`backbones.pool_misfit`)."""
    from tl_lightning.models.backbones import pool_misfit

    if (misfit := pool_misfit(backbone, pool, kwargs)) is not None:
        raise BadValue(
            f"model.pool={pool} does not fit {backbone}: {misfit}. Use model.pool=auto (the recipe picks one that "
            "fits) or model.pool=null (the weights' own)."
        )


def check_writable(name: str, folder: Path, create: bool = True) -> None:
    """`folder` exists or can be made, and a file can be written in it. `create=False` makes nothing: the nearest
    folder that exists must take writes (for a folder another tool creates next, as Hydra its run folder; a
    read-only mount there ends Hydra's start in a traceback otherwise)."""
    if not create:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not os.access(existing, os.W_OK):
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
            why = "Read-only file system" if read_only else "Permission denied"
            raise BadValue(f"{name}='{folder}' is not writable ({why}); point it at a folder you can write to.")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise BadValue(
            f"{name}='{folder}' is not writable ({err.strerror}); point it at a folder you can write to."
        ) from None


def check_resume(ckpt_path: str, class_names: list[str]) -> str:
    """The checkpoint to resume exists, loads, is ours, and was trained on these classes; returns where it is
    ("epoch 2, step 6") for the log."""
    from tl_lightning.models.checkpoint import check_same_classes, read_checkpoint

    saved = read_checkpoint(ckpt_path, "ckpt_path")
    check_same_classes(saved["hyper_parameters"].get("class_names", class_names), class_names)
    return f"epoch {saved.get('epoch', '?')}, step {saved.get('global_step', '?')}"


def check_command_line(conf: Path, argv: list[str]) -> None:
    """Every job the command line would start, checked before Hydra starts one (`check_jobs`), its mistakes
    printed as one sentence."""
    with user_errors():
        check_jobs(conf, argv)
