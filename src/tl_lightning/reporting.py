"""Files a run leaves for people: metrics.json, a summary table, and the test report.

The test report (`write_report`) is computed from the best checkpoint's test-set logits: per-class precision,
recall, F1 and support with macro and weighted averages (torchmetrics), the confusion matrix as PNG and CSV
(counts and row-normalised), the highest-loss images, and a reliability diagram with the expected calibration
error before and after temperature scaling, all linked from `report.md`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tl_lightning.calibration import ECE_BINS, ReliabilityBins, expected_calibration_error, reliability_bins
from tl_lightning.images import load_image


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
    plt = pyplot()

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


@dataclass(frozen=True)
class ClassReport:
    """Per-class precision, recall, F1 and support (class-index order), plus macro and weighted averages."""

    class_names: list[str]
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor

    @classmethod
    def of(cls, preds: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str]) -> ClassReport:
        n = len(class_names)
        per_class = {"average": None, "num_classes": n, "zero_division": 0}
        return cls(
            list(class_names),
            multiclass_precision(preds, targets, **per_class),
            multiclass_recall(preds, targets, **per_class),
            multiclass_f1_score(preds, targets, **per_class),
            torch.bincount(targets, minlength=n),
        )

    def averages(self) -> dict[str, dict[str, float]]:
        weights = self.support.float() / self.support.sum().clamp(min=1)
        out = {}
        for name, w in (("macro avg", torch.full_like(weights, 1 / len(weights))), ("weighted avg", weights)):
            out[name] = {m: float((getattr(self, m) * w).sum()) for m in ("precision", "recall", "f1")}
        return out

    def rows(self) -> list[list[Any]]:
        """CSV rows: header, one per class, then the averages (support = all samples)."""
        header = ["class", "precision", "recall", "f1", "support"]
        rows: list[list[Any]] = [header]
        for i, name in enumerate(self.class_names):
            metrics = [float(self.precision[i]), float(self.recall[i]), float(self.f1[i])]
            rows.append([name, *(f"{v:.4f}" for v in metrics), int(self.support[i])])
        total = int(self.support.sum())
        for name, values in self.averages().items():
            rows.append([name, *(f"{values[m]:.4f}" for m in ("precision", "recall", "f1")), total])
        return rows


def write_report(
    out: Path,
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str],
    files: Sequence[Path],
    temperature: float = 1.0,
    channels: int = 3,
    top_losses: int = 16,
    checkpoint: str = "",
) -> dict[str, float]:
    """Write `out/report.md` and its files under `out/report/`; return the metrics the test loop lacks.

    `files` are the test images in the order of `logits`, shown in the top-loss grid as read from disk. The
    returned metrics are the calibration errors, the temperature and the support-weighted averages.
    """
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    probs, calibrated = logits.softmax(-1), (logits / temperature).softmax(-1)
    preds = probs.argmax(-1)
    report = ClassReport.of(preds, targets, class_names)
    _write_csv(folder / "per_class.csv", report.rows())
    n = len(class_names)
    confusion = multiclass_confusion_matrix(preds, targets, n)
    normalised = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    _write_csv(folder / "confusion_matrix.csv", _matrix_rows(confusion.tolist(), class_names))
    _write_csv(
        folder / "confusion_matrix_normalized.csv",
        _matrix_rows([[f"{v:.4f}" for v in row] for row in normalised.tolist()], class_names),
    )
    plot_confusion_matrix(confusion, class_names, folder / "confusion_matrix.png")
    ece, ece_calibrated = expected_calibration_error(probs, targets), expected_calibration_error(calibrated, targets)
    plot_reliability(
        {"raw": reliability_bins(probs, targets), f"T = {temperature:.2f}": reliability_bins(calibrated, targets)},
        {"raw": ece, f"T = {temperature:.2f}": ece_calibrated},
        folder / "reliability.png",
    )
    losses = F.cross_entropy(logits, targets, reduction="none")
    worst = losses.argsort(descending=True)[:top_losses].tolist()
    plot_top_losses([files[i] for i in worst], targets[worst], probs[worst], class_names, channels,
                    folder / "top_losses.png")  # fmt: skip
    scalars = {"test/ece": ece, "test/ece_calibrated": ece_calibrated, "calibration/temperature": float(temperature)}
    scalars |= {f"test/{m}_weighted": v for m, v in report.averages()["weighted avg"].items()}
    worst_rows = [(files[i], class_names[targets[i]], class_names[preds[i]], float(probs[i, preds[i]]),
                   float(losses[i])) for i in worst]  # fmt: skip
    table = [[str(f), t, p, f"{q:.6f}", f"{v:.6f}"] for f, t, p, q, v in worst_rows]
    _write_csv(folder / "top_losses.csv", [["path", "true", "predicted", "probability", "loss"], *table])
    accuracy = float((preds == targets).float().mean())
    (out / "report.md").write_text(_markdown(report, scalars, accuracy, worst_rows, checkpoint, len(targets)))
    return scalars


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _matrix_rows(matrix: list[list[Any]], class_names: Sequence[str]) -> list[list[Any]]:
    return [["true \\ predicted", *class_names], *([name, *row] for name, row in zip(class_names, matrix, strict=True))]


def _markdown(
    report: ClassReport, scalars: dict[str, float], accuracy: float, worst: list[tuple], checkpoint: str, n: int
) -> str:
    rows = report.rows()
    table = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    table += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows[1:]]
    weakest = min(range(len(report.class_names)), key=lambda i: float(report.recall[i]))
    lines = [
        "# Test report",
        "",
        f"{n} test images, checkpoint `{checkpoint or 'final weights'}`.",
        f"Accuracy {accuracy:.4f}; macro F1 {report.averages()['macro avg']['f1']:.4f}; "
        f"weakest recall: `{report.class_names[weakest]}` ({float(report.recall[weakest]):.4f}).",
        "",
        "## Per class",
        "",
        *table,
        "",
        "Also as [report/per_class.csv](report/per_class.csv).",
        "",
        "## Confusion matrix",
        "",
        "![confusion matrix](report/confusion_matrix.png)",
        "",
        "Counts: [report/confusion_matrix.csv](report/confusion_matrix.csv); row-normalised (recall per true class): "
        "[report/confusion_matrix_normalized.csv](report/confusion_matrix_normalized.csv).",
        "",
        "## Calibration",
        "",
        f"Expected calibration error ({ECE_BINS} bins): {scalars['test/ece']:.4f} raw, "
        f"{scalars['test/ece_calibrated']:.4f} after temperature scaling (T = "
        f"{scalars['calibration/temperature']:.3f}, fitted on validation; prediction applies it).",
        "",
        "![reliability diagram](report/reliability.png)",
        "",
        "## Highest-loss test images",
        "",
        "![top losses](report/top_losses.png)",
        "",
        "As a table in [report/top_losses.csv](report/top_losses.csv); Grad-CAM of these images: "
        "`python -m tl_lightning.explain CKPT --top-losses RUN`.",
        "",
        "| file | true | predicted | p(predicted) | loss |",
        "|---|---|---|---|---|",
        *(f"| {f} | {t} | {p} | {prob:.3f} | {loss:.3f} |" for f, t, p, prob, loss in worst),
        "",
    ]
    return "\n".join(lines)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bins: Mapping[str, ReliabilityBins], eces: Mapping[str, float], path: Path) -> Path:
    """Accuracy against confidence per bin, one panel per probability set, with the diagonal of perfect calibration."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(bins), figsize=(4.5 * len(bins), 4.5), squeeze=False)
    for ax, (name, b) in zip(axes[0], bins.items(), strict=True):
        width = float(b.edges[1] - b.edges[0])
        used = b.count > 0
        centres = (b.edges[:-1] + width / 2)[used]
        ax.bar(centres, b.accuracy[used], width=width, edgecolor="black", label="accuracy")
        ax.bar(centres, (b.confidence - b.accuracy)[used], bottom=b.accuracy[used], width=width, color="red",
               alpha=0.3, label="gap")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name}: ECE {eces[name]:.4f}")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_top_losses(
    files: Sequence[Path],
    targets: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    channels: int,
    path: Path,
) -> Path:
    """A grid of images as read from disk, titled true / predicted (probability)."""
    plt = pyplot()
    cols = min(4, max(1, len(files)))
    rows = max(1, math.ceil(len(files) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, target, p in zip(axes.flat, files, targets.tolist(), probs, strict=False):
        show_image(ax, load_image(file, channels))
        predicted = int(p.argmax())
        ax.set_title(f"{Path(file).name}\ntrue {class_names[target]} / pred {class_names[predicted]} "
                     f"({float(p[predicted]):.2f})", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def show_image(ax: Any, image: Any) -> None:
    """Draw an HxWxC image of any channel count and range: its first three bands (or the only one, in grey),
    stretched to 0..1 so 16-bit, float and multi-band inputs are visible."""
    import numpy as np

    image = np.asarray(image, dtype=np.float32)
    shown = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
    low, high = float(shown.min()), float(shown.max())
    shown = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)


def log_report(loggers: Sequence[Any], scalars: Mapping[str, float], out: Path, step: int) -> None:
    """Send the report's scalars to every logger, and its images to loggers that take images (TensorBoard)."""
    for logger in loggers:
        logger.log_metrics(dict(scalars), step=step)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            import matplotlib.image

            for png in sorted((out / "report").glob("*.png")):
                image = matplotlib.image.imread(png)[..., :3]
                experiment.add_image(f"report/{png.stem}", image, global_step=step, dataformats="HWC")
        logger.save()
