"""Experiment trackers (MLflow, Weights & Biases): what a run sends them besides Lightning's per-epoch metrics.

Lightning's `MLFlowLogger` and `WandbLogger` log metrics and the module's hyperparameters; a tracker's user also
wants the config as it ran (with the recipe's automatic choices), the class names to search by, and the run's files:
the report, `metrics.json`, `config.yaml` and the run's model.ckpt. Lightning's `log_model` would upload checkpoints
as they are written, including `last.ckpt` every epoch; here only the files a run ends with are sent, once.
"""

from __future__ import annotations

import logging
import netrc
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, MLFlowLogger, WandbLogger

from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)

RUN_FILES = ("report.md", "metrics.json", "config.yaml", "audit.json")


def mlflow_logger(save_dir: str, tracking_uri: str | None = None, **kwargs: Any) -> MLFlowLogger:
    """Lightning's `MLFlowLogger`; without `tracking_uri`, a SQLite store and its artifacts in `save_dir` (MLflow 3
    refuses its old file store, and would put artifacts under the working directory)."""
    if tracking_uri is None:
        folder = Path(save_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        kwargs.setdefault("artifact_location", str(folder / "artifacts"))
        log.info("MLflow: local store %s; browse it with: mlflow ui --backend-store-uri %s", folder, tracking_uri)
    elif urlparse(tracking_uri).scheme in ("http", "https"):
        _check_reachable(tracking_uri)
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)


def _check_reachable(tracking_uri: str) -> None:
    """A tracking server that does not answer is found now, in a second, not after MLflow's client has retried
    for minutes at the first metric. Any HTTP answer counts (an auth proxy's 401 too); only no answer fails."""
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise BadValue(
            f"The MLflow tracking server at logger.mlflow.tracking_uri={tracking_uri} does not answer ({reason}). "
            "Start it, correct the address, or leave tracking_uri unset for a local store in the run folder."
        ) from None


def wandb_logger(save_dir: str, offline: bool | None = None, **kwargs: Any) -> WandbLogger:
    """Lightning's `WandbLogger`, offline when no W&B login is present (`offline=None`), saying how to sync later."""
    if offline is None:
        offline = not _wandb_login()
    logger = WandbLogger(save_dir=save_dir, offline=offline, **kwargs)
    if offline:
        log.info(
            "W&B: no login found (WANDB_API_KEY or `wandb login`); logging offline under %s/wandb. Upload later "
            "with: wandb sync %s/wandb/offline-run-*",
            save_dir,
            save_dir,
        )
    return logger


def _wandb_login() -> bool:
    """A W&B API key in the environment, or in ~/.netrc for the W&B host (where `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def log_config(loggers: list[Logger], config: dict[str, Any], class_names: list[str]) -> None:
    """The resolved config (the recipe's choices filled in) as the trackers' parameters; the class names as a tag."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger | WandbLogger):
            logger.log_hyperparams(config)
        if isinstance(logger, MLFlowLogger):
            logger.experiment.set_tag(logger.run_id, "class_names", ", ".join(class_names))
        elif isinstance(logger, WandbLogger):
            logger.experiment.tags = tuple(logger.experiment.tags or ()) + tuple(class_names)[:50]


def log_run_files(loggers: list[Logger], out: Path, model_file: str) -> None:
    """The run's files, its report figures and its model.ckpt, as artifacts of each tracker's run; then the W&B
    run is finished (the next job of a multirun, in this process, would otherwise log into it)."""
    files = [(out / name, "") for name in RUN_FILES if (out / name).is_file()]
    files += [(png, "report") for png in sorted((out / "report").glob("*")) if png.is_file()]
    files += [(Path(model_file), "checkpoints")] if model_file and Path(model_file).is_file() else []
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            for path, folder in files:
                logger.experiment.log_artifact(logger.run_id, str(path), folder or None)
        elif isinstance(logger, WandbLogger):  # linked, not copied, under files/<run folder name>/
            for path, _ in files:
                logger.experiment.save(str(path), base_path=str(out.parent), policy="now")
            logger.experiment.finish()
