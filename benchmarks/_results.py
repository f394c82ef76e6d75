"""Where benchmark figures go: one JSON per benchmark under benchmarks/results/, with the machine they ran on."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


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
