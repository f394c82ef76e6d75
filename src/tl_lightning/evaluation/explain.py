"""Grad-CAM: which parts of an image drove a prediction, for CNN and ViT backbones.

Written by hand rather than with the `grad-cam` package: it is ~40 lines, and tl_lightning keeps to its fixed
set of dependencies. For CNNs the map is the backbone's final feature map (timm's `forward_features`, the input
of global pooling); for vision transformers it is the last block's first norm, whose patch tokens still reach
the class token through attention (the final outputs do not: only the class token is pooled, so their patch
gradients are 0). A `layer` name picks any other module of the backbone. The command line is
`python -m tl_lightning.explain`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tl_lightning.data.images import load_image
from tl_lightning.data.transforms import eval_transform
from tl_lightning.evaluation.plots import new_figure, show_image
from tl_lightning.models.heads import scaled_softmax
from tl_lightning.utils import BadValue, NotFound, save_figure


def target_layer(backbone: nn.Module, name: str | None = None) -> tuple[nn.Module | None, int | None]:
    """The module whose output Grad-CAM weighs (None: the final feature map), and the prefix tokens of token maps."""
    tokens = int(backbone.num_prefix_tokens) if hasattr(backbone, "num_prefix_tokens") else None
    if name is not None:
        try:
            return backbone.get_submodule(name), tokens
        except AttributeError:
            raise BadValue(f"The backbone has no module '{name}'; see print(model.backbone) for names.") from None
    if tokens is not None and hasattr(backbone, "blocks"):
        return backbone.blocks[-1].norm1, tokens
    return None, None


def grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps `(B, H, W)` in [0, 1] at the input's size, and the logits.

    `model` is a `TransferClassifier` (anything with `.backbone` and a forward to logits); `classes` defaults to
    the predicted ones.
    """
    module, prefix = target_layer(model.backbone, layer)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["activation"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if module is not None:
            return model(x)
        features = model.backbone.forward_features(x)
        keep(model.backbone, x, features)
        return model.head(model.backbone.forward_head(features))

    handle = module.register_forward_hook(keep) if module is not None else None
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # an input that needs grad: the graph exists even when parameters are frozen
            logits = forward(x.detach().requires_grad_(True))
            chosen = logits.argmax(-1) if classes is None else classes
            logits.gather(1, chosen.view(-1, 1)).sum().backward()
    finally:
        if handle is not None:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    activation, gradient = captured["activation"].detach(), captured["gradient"].detach()
    if prefix is not None:  # (B, tokens, C) -> (B, C, h, w)
        activation, gradient = _tokens_to_map(activation, prefix), _tokens_to_map(gradient, prefix)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).max(dim=1).values.clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak, logits.detach()


def _tokens_to_map(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise BadValue(f"{patches.shape[1]} patch tokens do not make a square grid; pass --layer explicitly.")
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


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
