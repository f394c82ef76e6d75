"""Grad-CAM: which parts of an image drove a prediction, for CNN and ViT backbones, and that map over the image.

Written by hand rather than with the `grad-cam` package: it is ~40 lines, and tl_lightning keeps to its fixed
set of dependencies. For CNNs the map is the backbone's final feature map (timm's `forward_features`, the input
of global pooling); for vision transformers it is the last block's first norm, whose patch tokens still reach
the class token through attention (the final outputs do not: only the class token is pooled, so their patch
gradients are 0). A `layer` name picks any other module of the backbone. Files and reports are drawn by
`evaluation.explain` (`python -m tl_lightning explain`); the serving page gets `overlay_png`.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tl_lightning.utils import BadValue


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


def overlay_png(x: torch.Tensor, cam: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> bytes:
    """A PNG of what the model saw (`x`, one preprocessed image, un-normalized) with the map `cam` over it in the
    jet colour scale, strongest where the map is: the image a page shows beside an answer."""
    from matplotlib import colormaps

    shape = (-1, 1, 1)
    image = (x.detach().cpu().float() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    heat = torch.from_numpy(colormaps["jet"](cam.cpu().numpy())[..., :3]).permute(2, 0, 1).float()
    alpha = 0.5 * cam.cpu().float()[None]
    blended = (image[:3] * (1 - alpha) + heat * alpha).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
