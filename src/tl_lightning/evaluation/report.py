"""Files a run leaves for people: metrics.json, a summary table, and the test report.

The test report (`write_report`) is computed from the run's model's test-set logits: per-class precision,
recall, F1 and support with macro and weighted averages (torchmetrics), the confusion matrix as PNG and CSV
(counts and row-normalised), the highest-loss images, and a reliability diagram with the expected calibration
error before and after temperature scaling, all linked from `report.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from tl_lightning.data.images import load_image
from tl_lightning.evaluation.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from tl_lightning.evaluation.plots import plot_confusion_matrix, plot_reliability, plot_top_losses
from tl_lightning.models.heads import scaled_softmax
from tl_lightning.utils import write_csv, write_json, write_text


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> Path:
    """Write `metrics` as JSON, tensors turned into numbers, atomically."""
    clean = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in metrics.items()}
    return write_json(path, clean, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
    read_image: Callable[[Path, int], np.ndarray] = load_image,
) -> dict[str, float]:
    """Write `out/report.md` and its files under `out/report/`; return the metrics the test loop lacks.

    `files` are the test images in the order of `logits`, shown in the top-loss grid as `read_image` decodes them
    (from disk; from LitData chunks for a `StreamingDataModule`); `report/predictions.csv` holds every test image's
    prediction in that order, for error analysis and for comparing two runs image by image (a paired test says more
    than two accuracies on a few hundred images). The returned metrics are the calibration errors, the temperature
    and the support-weighted averages.
    """
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    probs, calibrated = scaled_softmax(logits), scaled_softmax(logits, temperature)
    preds = probs.argmax(-1)
    report = ClassReport.of(preds, targets, class_names)
    write_csv(folder / "per_class.csv", report.rows())
    n = len(class_names)
    confusion = multiclass_confusion_matrix(preds, targets, n)
    normalised = confusion / confusion.sum(1, keepdim=True).clamp(min=1)
    write_csv(folder / "confusion_matrix.csv", _matrix_rows(confusion.tolist(), class_names))
    write_csv(
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
    images = [read_image(files[i], channels) for i in worst]
    plot_top_losses(
        [files[i] for i in worst], images, targets[worst], probs[worst], class_names, folder / "top_losses.png"
    )
    scalars = {"test/ece": ece, "test/ece_calibrated": ece_calibrated, "calibration/temperature": float(temperature)}
    scalars |= {f"test/{m}_weighted": v for m, v in report.averages()["weighted avg"].items()}
    confidence = probs.gather(1, preds[:, None]).squeeze(1)
    rows = [
        (file, class_names[true], class_names[predicted], probability, loss)
        for file, true, predicted, probability, loss in zip(
            files, targets.tolist(), preds.tolist(), confidence.tolist(), losses.tolist(), strict=True
        )
    ]
    header = ["path", "true", "predicted", "probability", "loss"]
    write_csv(folder / "predictions.csv", [header, *(_csv_row(row) for row in rows)])
    worst_rows = [rows[i] for i in worst]
    write_csv(folder / "top_losses.csv", [header, *(_csv_row(row) for row in worst_rows)])
    accuracy = float((preds == targets).float().mean())
    write_text(out / "report.md", _markdown(report, scalars, accuracy, worst_rows, checkpoint, len(targets)))
    return scalars


def _csv_row(row: tuple[Path, str, str, float, float]) -> list[str]:
    path, true, predicted, probability, loss = row
    return [str(path), true, predicted, f"{probability:.6f}", f"{loss:.6f}"]


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
        "Also as [report/per_class.csv](report/per_class.csv); every test image's prediction: "
        "[report/predictions.csv](report/predictions.csv).",
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
        "`python -m tl_lightning explain CKPT --top-losses RUN`.",
        "",
        "| file | true | predicted | p(predicted) | loss |",
        "|---|---|---|---|---|",
        *(f"| {f} | {t} | {p} | {prob:.3f} | {loss:.3f} |" for f, t, p, prob, loss in worst),
        "",
    ]
    return "\n".join(lines)


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
