"""Where benchmark figures go: one JSON per benchmark under benchmarks/results/, with the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def train_default(folder: Path, seed: int, epochs: int, out: Path, *overrides: str) -> dict:
    """`python train.py data=folder` on `folder` with `overrides`, in a subprocess on this process's thread count;
    its metrics.json, with `seconds`: fit time plus the recipe's measuring of the data (part of fitting)."""
    command = [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={folder}", f"seed={seed}"]
    command += [f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false"]
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([*command, *overrides], cwd=ROOT, capture_output=True, text=True, env=os.environ | threads)
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics | {"seconds": round(metrics["fit_seconds"] + metrics.get("recipe_seconds", 0.0), 1)}


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"


def save_json(name: str, result: dict | list, out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def save_row(name: str, key: str, row: dict, out: Path = RESULTS) -> dict:
    """Add one finished run to `out/<name>.json` and return every row: the file is read again first, so two
    benchmark processes filling the same file (one running fastai, one ours) keep each other's rows."""
    path = out / f"{name}.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[key] = row
    save_json(name, rows, out)
    return rows
