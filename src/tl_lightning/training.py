"""The training entry: compose data, model, callbacks and trainer from a Hydra config, fit, test, report.

Only this module touches the `DictConfig`; everything it builds takes plain arguments. `run` returns the
metrics so tests call it in-process and Hydra sweepers can optimise one of them. Under DDP every rank runs
`run` (Lightning relaunches `train.py` into Hydra's same run folder); only rank 0 writes files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from tl_lightning.calibration import collect_logits, fit_temperature, store_temperature
from tl_lightning.distributed import TimmSyncBatchNorm
from tl_lightning.lr_finder import lr_range_test, plot_range_tests
from tl_lightning.probe import linear_probe
from tl_lightning.reporting import log_report, summary_table, write_metrics, write_report

log = logging.getLogger(__name__)


def _prepare(cfg: DictConfig, standalone: bool = False) -> tuple[Path, Any, Any]:
    """The run folder (with the resolved config), the seed, the prepared datamodule and the model built for it.

    `standalone`: the datamodule is set up here, from the model's preprocessing, for tasks without a trainer.
    """
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    model = instantiate(
        cfg.model, num_classes=datamodule.num_classes, class_names=datamodule.class_names, _convert_="all"
    )
    if standalone:
        datamodule.data_config = dict(model.data_config)
        datamodule.setup("fit")
    return out, datamodule, model


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit on the training split, test the best checkpoint, and write the run folder.

    After fitting, the best checkpoint gets a temperature fitted on validation (`calibration.py`), then it is
    tested and reported. The run folder (`paths.output_dir`) gets `config.yaml`, `split.csv`,
    `checkpoints/{best,last}.ckpt`, `metrics.json`, and `report.md` with its files under `report/`.
    """
    out, datamodule, model = _prepare(cfg)
    if rank_zero_only.rank == 0:
        datamodule.save_split(out / "split.csv")
        if datamodule.audit_report is not None:
            datamodule.audit_report.save(out / "audit.json")
            log.info(datamodule.audit_report.summary())
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    layer_sync = {}
    if cfg.trainer.get("sync_batchnorm"):  # Lightning's own converter would drop timm's fused activations
        layer_sync = {"sync_batchnorm": False, "plugins": [TimmSyncBatchNorm()]}
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **layer_sync)

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - started

    if datamodule.data_config is None:  # ddp_spawn: the datamodule was set up in the spawned processes only
        datamodule.data_config = dict(model.data_config)
    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    best = monitored[0].best_model_path if monitored else ""
    metrics: dict[str, Any] = {"fit_seconds": round(fit_seconds, 1), "checkpoint": best or "final weights"}
    if (best_val := trainer.callback_metrics.get("val/acc_best")) is not None:
        metrics["val/acc_best"] = float(best_val)  # what sweeps should optimise: never the test split
    metrics["calibration/temperature"] = calibrate(model, datamodule, best, trainer.is_global_zero)
    if datamodule.has_test:
        results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        metrics |= results[0] if results else {}
        if trainer.is_global_zero:
            logits, targets = collect_logits(model, datamodule.eval_dataloader("test"))
            files = [path for path, _ in datamodule.samples("test")]
            channels = int(model.data_config["input_size"][0])
            temperature = float(model.temperature)
            scalars = write_report(out, logits, targets, model.class_names, files, temperature, channels,
                                   checkpoint=best)  # fmt: skip
            log_report(trainer.loggers, scalars, out, trainer.global_step)
            metrics |= scalars
    else:
        log.warning("No test split: metrics.json holds the best checkpoint's validation metrics instead.")
        metrics |= trainer.validate(model, datamodule=datamodule, ckpt_path=best or None)[0]
    metrics["weights"] = model.weights_info.get("source")
    if trainer.is_global_zero:
        write_metrics(out / "metrics.json", metrics)
        log.info("Run folder: %s\n%s", out, summary_table(metrics))
    return metrics


def calibrate(model: Any, datamodule: Any, best: str, write: bool) -> float:
    """Load the best checkpoint's weights, fit a temperature on validation and store it there (when `write`)."""
    if best:
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    temperature = fit_temperature(*collect_logits(model, datamodule.eval_dataloader("val")))
    model.temperature.fill_(temperature)
    if best and write:
        store_temperature(best, temperature)
    log.info("Temperature scaling fitted on validation: T = %.3f", temperature)
    return temperature


def probe(cfg: DictConfig) -> dict[str, Any]:
    """`task=probe`: a linear probe of the frozen pretrained features; writes `probe.json` with the verdict.

    Features are cached under `paths.cache_dir/features`, so probing again (another `probe.c`) costs seconds.
    """
    out, datamodule, model = _prepare(cfg, standalone=True)
    result = linear_probe(model, datamodule, Path(cfg.paths.cache_dir) / "features", c=cfg.probe.c).to_dict()
    write_metrics(out / "probe.json", result)
    scores = ", ".join(f"{split} {value:.4f}" for split, value in result["accuracy"].items())
    log.info("Linear probe accuracy: %s\n%s\nStart with: python train.py %s",
             scores, result["interpretation"], result["recommendation"])  # fmt: skip
    return result


def find_lr(cfg: DictConfig) -> dict[str, Any]:
    """`task=lr_find`: a range test for the head on the frozen backbone, and for the last unfrozen phase.

    Writes `lr_find.png` and `lr_find.json` (suggestions and the `model.lr=...` override for the next run).
    """
    out, datamodule, model = _prepare(cfg, standalone=True)
    finetuning = instantiate(cfg.callbacks.finetuning)
    loader = datamodule.train_dataloader()
    options = dict(cfg.lr_find)
    tests = [lr_range_test(model, loader, finetuning, epoch=0, phase="frozen phase", **options)]
    last = finetuning.last_change_epoch(model, cfg.trainer.max_epochs)
    if last > 0:
        tests.append(lr_range_test(model, loader, finetuning, epoch=last, phase=f"from epoch {last}", **options))
    plot_range_tests(tests, out / "lr_find.png")
    chosen = tests[-1].suggestion
    result = {f"lr_find/{t.phase}": t.suggestion for t in tests} | {"override": f"model.lr={chosen:.2e}"}
    write_metrics(out / "lr_find.json", result)
    log.info("LR range test (model.lr is %s): %s", cfg.model.lr, result)
    log.info("Next run: python train.py %s", result["override"])
    return result
