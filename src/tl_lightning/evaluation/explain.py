"""Grad-CAM maps of image files, drawn beside the images, and of a run's highest-loss test images (the maps
themselves: `models.gradcam`). The command line is `python -m tl_lightning explain`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_lightning.data.images import load_image
from tl_lightning.data.transforms import eval_transform
from tl_lightning.evaluation.plots import new_figure, show_image
from tl_lightning.models.gradcam import grad_cam
from tl_lightning.models.heads import scaled_softmax
from tl_lightning.utils import BadValue, NotFound, save_figure


def save_overlay(image: object, cam: torch.Tensor, title: str, path: Path) -> Path:
    """The image (as read from disk, resized to the map) with the map over it in a colour scale."""
    array = torch.as_tensor(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    array = F.interpolate(array, size=cam.shape, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    fig, axes = new_figure(1, 2, figsize=(7, 3.8))
    show_image(axes[0, 0], array)
    show_image(axes[0, 1], array)
    axes[0, 1].imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def explain_files(
    model: nn.Module,
    files: Sequence[Path],
    out: Path,
    class_name: str | None = None,
    layer: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """One overlay PNG per file in `out`, for `class_name` or the predicted class; `labels` (true classes) titled."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.class_names)
    if class_name is not None and class_name not in names:
        raise BadValue(f"Class '{class_name}' is not one of the checkpoint's classes: {names}.")
    transform = eval_transform(model.data_config)
    channels = int(model.data_config["input_size"][0])
    written = []
    for i, file in enumerate(files):
        image = load_image(file, channels)
        x = transform(image=image)["image"][None].to(next(model.parameters()).device)
        classes = None if class_name is None else torch.tensor([names.index(class_name)], device=x.device)
        cam, logits = grad_cam(model, x, classes, layer)
        probs = scaled_softmax(logits, model.temperature)[0]
        shown = int(probs.argmax()) if classes is None else int(classes[0])
        title = f"{Path(file).name}: Grad-CAM for '{names[shown]}' (p={float(probs[shown]):.2f})"
        if labels is not None:
            title += f", true '{labels[i]}'"
        written.append(save_overlay(image, cam[0].cpu(), title, out / f"{i:03d}_{Path(file).stem}_gradcam.png"))
    return written


def top_loss_files(run: Path) -> tuple[list[Path], list[str]]:
    """The files and true classes listed in a run's `report/top_losses.csv`."""
    table = run / "report" / "top_losses.csv"
    if not table.is_file():
        raise NotFound(f"'{table}' does not exist: --top-losses takes a run folder that has a test report.")
    with open(table) as f:
        rows = list(csv.DictReader(f))
    return [Path(r["path"]) for r in rows], [r["true"] for r in rows]
