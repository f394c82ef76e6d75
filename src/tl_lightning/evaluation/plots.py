"""The report's figures: confusion matrix, reliability diagram, top-loss grid, and an image drawn at any depth.

Each figure is a `matplotlib.figure.Figure` on its own Agg canvas, never pyplot: plotting here must not switch the
backend or leave figures open in a user's notebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tl_lightning.evaluation.calibration import ReliabilityBins
from tl_lightning.utils import save_figure


def new_figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6, 4)) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas and its axes grid (always 2-D): no pyplot state, no global backend."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str], path: Path) -> Path:
    """Save a row-normalised confusion matrix (true rows, predicted columns) with counts as a PNG."""
    counts = confusion.cpu().numpy()
    rates = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(class_names)
    side = min(4 + 0.45 * n, 40)
    fig, axes = new_figure(figsize=(side, side))
    ax = axes[0, 0]
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
    save_figure(fig, path)
    return path


def plot_reliability(bins: Mapping[str, ReliabilityBins], eces: Mapping[str, float], path: Path) -> Path:
    """Accuracy against confidence per bin, one panel per probability set, with the diagonal of perfect calibration."""
    fig, axes = new_figure(1, len(bins), figsize=(4.5 * len(bins), 4.5))
    for ax, (name, b) in zip(axes[0], bins.items(), strict=True):
        width = float(b.edges[1] - b.edges[0])
        used = b.count > 0
        centres = (b.edges[:-1] + width / 2)[used]
        ax.bar(centres, b.accuracy[used], width=width, edgecolor="black", label="accuracy")
        ax.bar(
            centres,
            (b.confidence - b.accuracy)[used],
            bottom=b.accuracy[used],
            width=width,
            color="red",
            alpha=0.3,
            label="gap",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name}: ECE {eces[name]:.4f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_top_losses(
    files: Sequence[Path],
    images: Sequence[np.ndarray],
    targets: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    path: Path,
) -> Path:
    """A grid of the decoded `images`, titled with their file's name, true / predicted (probability)."""
    cols = min(4, max(1, len(files)))
    rows = max(1, math.ceil(len(files) / cols))
    fig, axes = new_figure(rows, cols, figsize=(3 * cols, 3.3 * rows))
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, image, target, p in zip(axes.flat, files, images, targets.tolist(), probs, strict=False):
        show_image(ax, image)
        predicted = int(p.argmax())
        ax.set_title(
            f"{Path(file).name}\ntrue {class_names[target]} / pred {class_names[predicted]} "
            f"({float(p[predicted]):.2f})",
            fontsize=8,
        )
    fig.tight_layout()
    save_figure(fig, path)
    return path


def show_image(ax: Any, image: Any) -> None:
    """Draw an HxWxC image of any channel count and range: its first three bands (or the only one, in grey),
    stretched to 0..1 so 16-bit, float and multi-band inputs are visible."""
    image = np.asarray(image, dtype=np.float32)
    shown = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
    low, high = float(shown.min()), float(shown.max())
    shown = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
