"""Headless timm backbones with the preprocessing their weights expect and a record of where weights came from.

`python -m tl_lightning backbones --list [PATTERN]` lists the names timm knows.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from tl_lightning.data.transforms import DataConfig
from tl_lightning.models.weights import load_pretrained, read_state_dict, resolve_weights_file, sha256_of
from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """A headless feature extractor, its input spec and its weights' provenance."""

    model: nn.Module
    num_features: int
    data_config: dict[str, Any]
    weights: dict[str, Any] = field(default_factory=dict)


def check_backbone_name(name: str) -> None:
    """Raise a `ValueError` listing close matches when timm does not know `name`."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise BadValue(f"Unknown backbone '{name}'.{hint} List all with `python -m tl_lightning backbones --list`.")


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights_file: str | None = None,
    **kwargs: Any,
) -> Backbone:
    """Create timm model `name` without its classifier (`num_classes=0`).

    Args:
        name: any timm model name.
        pretrained: start from pretrained weights; `False` means random initialisation.
        weights_file: with `pretrained`, load from this file (or `package:NAME`) instead of timm's hub.
        **kwargs: passed to `timm.create_model`; `None` values are dropped so YAML `null` keeps timm's default.

    Raises:
        ValueError: unknown name or weights that do not fit.
        FileNotFoundError: missing weights file or weights package.
        RuntimeError: the hub could not be reached for `pretrained=True` without `weights_file`.
    """
    check_backbone_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not pretrained:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        weights = {"source": "random-init"}
    elif weights_file:
        path = resolve_weights_file(weights_file)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        matched = load_pretrained(model, read_state_dict(path), origin=f"'{path}'")
        weights = {"source": weights_file, "file": str(path), "sha256": sha256_of(path), "matched_by": matched}
        log.info("Loaded %s weights from %s (matched by %s)", name, path, matched)
    else:
        model = _create_from_hub(name, **kwargs)
        cfg = model.pretrained_cfg
        weights = {"source": "timm", "tag": cfg.get("hf_hub_id") or cfg.get("url") or name}
    data_config = _with_channels(timm.data.resolve_model_data_config(model), kwargs.get("in_chans", 3))
    # A headless timm model outputs its pre-logits: `head_hidden_size` wide, which differs from `num_features` where
    # a head conv sits after pooling (MobileNetV3: 288 -> 1024), and twice as wide under concatenated avg + max pooling
    # (`global_pool="fastcatavgmax"`, fastai's head's pooling).
    width = getattr(model, "head_hidden_size", None) or model.num_features
    pool = getattr(model, "global_pool", None)
    if hasattr(pool, "feat_mult") and not getattr(model, "head_hidden_size", None):
        width *= pool.feat_mult()
    return Backbone(model=model, num_features=width, data_config=data_config, weights=weights)


def backbone_geometry(name: str, kwargs: Mapping[str, Any] | None = None) -> tuple[int, int, float]:
    """The weights' native resolution, the total stride and the weights' eval crop fraction, read from timm's
    config and `feature_info` of the model built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        options = {k: v for k, v in (kwargs or {}).items() if v}
        model = timm.create_model(name, pretrained=False, num_classes=0, **options)
    info = getattr(model, "feature_info", None)
    stride = int(info[-1]["reduction"]) if info else 1
    config = model.pretrained_cfg
    return int(config.get("input_size", (3, 224, 224))[-1]), stride, float(config.get("crop_pct") or 1.0)


def build_kwargs(backbone_kwargs: Mapping[str, Any] | None, pool: str | None) -> dict[str, Any]:
    """The `timm.create_model` arguments a `TransferClassifier` builds its backbone with: `backbone_kwargs`, plus
    `global_pool` when a `pool` is given. Every rebuild of a saved model (hub export, the feature cache's key)
    reads them from here, so none can build a backbone that pools differently from the one that trained.

    >>> build_kwargs({"drop_path_rate": 0.1}, "fastcatavgmax")
    {'drop_path_rate': 0.1, 'global_pool': 'fastcatavgmax'}
    """
    kwargs = dict(backbone_kwargs or {})
    if pool is not None:
        kwargs["global_pool"] = pool
    return kwargs


def pool_misfit(name: str, pool: str, kwargs: Mapping[str, Any] | None = None) -> str | None:
    """Why timm model `name` cannot pool its last feature map with `pool` (timm's `global_pool`) and keep its
    pretrained weights as they are, or `None` when it can.

    timm refuses some poolings itself (a ViT takes no `catavgmax`; ConvNeXt's head norm has the pooled width), and
    some it accepts change a weight's shape (MobileNetV3's conv after pooling reads the pooled width), so pretrained
    weights would not load. Both models are built on the meta device (no memory, no weights) and one input of the
    weights' size goes through the pooled one.

    >>> pool_misfit("test_resnet", "catavgmax") is None
    True
    >>> pool_misfit("test_vit", "catavgmax") is not None
    True
    """
    options = {k: v for k, v in (kwargs or {}).items() if v is not None and k != "global_pool"}
    try:
        with torch.device("meta"):
            own = timm.create_model(name, pretrained=False, num_classes=0, **options)
            pooled = timm.create_model(name, pretrained=False, num_classes=0, global_pool=pool, **options)
            size = own.pretrained_cfg.get("input_size", (3, 224, 224))[1:]
            pooled(torch.empty(1, int(options.get("in_chans", 3)), *size))
    except Exception as error:  # timm's asserts and shape errors alike: the pooling does not fit
        return str(error).strip() or type(error).__name__
    shapes = {key: value.shape for key, value in own.state_dict().items()}
    pooled_shapes = {key: value.shape for key, value in pooled.state_dict().items()}
    if pooled_shapes != shapes:
        keys = shapes.keys() | pooled_shapes.keys()
        changed = sorted(key for key in keys if shapes.get(key) != pooled_shapes.get(key))
        return f"it changes the pretrained weights' shapes ({', '.join(changed[:3])})"
    return None


def _with_channels(config: dict[str, Any], in_chans: int) -> dict[str, Any]:
    """Give the data config `in_chans` channels; timm's resolver keeps 3 whatever the model takes.

    One channel gets the mean of the RGB statistics (the first conv's weights are summed over RGB); more than
    three repeat R, G, B cyclically, as timm's `adapt_input_conv` repeats the weights.
    """
    if in_chans == 3:
        return config
    mean, std = config["mean"], config["std"]
    if in_chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    else:
        mean, std = tuple(mean[i % 3] for i in range(in_chans)), tuple(std[i % 3] for i in range(in_chans))
    return config | {"input_size": (in_chans, *config["input_size"][1:]), "mean": mean, "std": std}


def _create_from_hub(name: str, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if _is_network_error(err):
            raise RuntimeError(
                f"Could not download pretrained weights for '{name}' from timm's hub (no network?): {err}\n"
                "HINT: set backbone.weights_file to a local file (or a packaged source such as "
                "package:efficientnet_lite0), or backbone.pretrained=false to start from random weights."
            ) from err
        raise RuntimeError(
            f"timm could not load pretrained weights for '{name}': {err}\n"
            "HINT: check backbone.kwargs against the model, or set backbone.weights_file to weights you have."
        ) from err


def _is_network_error(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a failed connection, a time-out or an offline hub."""
    markers = ("Connection", "Timeout", "Offline", "LocalEntryNotFound", "MaxRetry", "NameResolution")
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)) or any(m in type(seen).__name__ for m in markers):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def with_overrides(
    config: Mapping[str, Any], image_size: int | None, crop_pct: float | None, crop_mode: str | None = None
) -> DataConfig:
    """The data config with another input resolution and eval crop, where given."""
    config = DataConfig(**config)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    if crop_pct is not None:
        config["crop_pct"] = crop_pct
    if crop_mode is not None:
        config["crop_mode"] = crop_mode
    return config
