"""Hydra callbacks for multiruns: mean +- standard deviation over the seeds of a `hparams_search=seeds` sweep.

Each job of a sweep writes `metrics.json` in its own folder; at the end of the multirun `SeedSummary` reads
them all and writes `seeds.json` and `seeds.md` in the sweep folder, so the spread that seeds alone cause is
reported next to every figure (a recipe change smaller than it is noise).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tl_lightning.utils import write_json, write_text

log = logging.getLogger(__name__)


def summarise(job_metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per numeric metric present in every job: mean, sample standard deviation, n and the values."""
    shared = set.intersection(*(set(m) for m in job_metrics)) if job_metrics else set()
    summary = {}
    for key in sorted(shared):
        values = [m[key] for m in job_metrics]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[key] = {"mean": statistics.fmean(values), "std": spread, "n": len(values), "values": values}
    return summary


def read_jobs(sweep_dir: Path) -> tuple[list[int | None], list[dict[str, Any]]]:
    """The seed and `metrics.json` of every finished job folder (numbered subfolders) of a sweep."""
    seeds, metrics = [], []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        if not (job / "metrics.json").is_file():
            log.warning("Sweep job %s has no metrics.json (failed or still running): left out of the summary.", job)
            continue
        config = OmegaConf.load(job / "config.yaml") if (job / "config.yaml").is_file() else {}
        seeds.append(config.get("seed") if config else None)
        metrics.append(json.loads((job / "metrics.json").read_text()))
    return seeds, metrics


class SeedSummary(Callback):
    """Write `seeds.json` and `seeds.md` (mean +- std per metric) in the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        seeds, metrics = read_jobs(sweep_dir)
        summary = summarise(metrics)
        write_json(sweep_dir / "seeds.json", {"seeds": seeds, "metrics": summary})
        rows = [f"| {k} | {v['mean']:.4f} | {v['std']:.4f} | {v['n']} |" for k, v in summary.items()]
        table = ["| metric | mean | std | runs |", "|---|---|---|---|", *rows]
        write_text(sweep_dir / "seeds.md", f"Seeds {seeds}\n\n" + "\n".join(table) + "\n")
        focus = config.get("optimized_metric")
        if focus in summary:
            log.info("%s over seeds %s: %.4f +- %.4f", focus, seeds, summary[focus]["mean"], summary[focus]["std"])
        log.info("Seed summary: %s", sweep_dir / "seeds.md")
