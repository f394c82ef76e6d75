"""Files a run leaves for people: metrics.json, a confusion-matrix PNG and a summary table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> Path:
    """Write `metrics` as JSON, tensors turned into numbers, through a temp file renamed into place."""
    clean = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in metrics.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plot_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str], path: Path) -> Path:
    """Save a row-normalised confusion matrix (true rows, predicted columns) with counts as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion.cpu().numpy()
    rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(class_names)
    side = min(4 + 0.45 * n, 40)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    ax.set_xticklabels(class_names, rotation=90)
    ax.set_yticklabels(class_names)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of the scalar metrics, per-class entries left out."""
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and "/acc_class/" not in k]
    width = max((len(k) for k, _ in rows), default=6)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
