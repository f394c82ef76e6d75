"""The recipe as one value: `plan(datamodule, backbone)` measures a folder under the pretrained backbone and returns a
`Recipe`, every automatic choice with its reason, before the model and the final datamodule are built.

The rules live in `finetuning.recipe` and the measurements in `finetuning.measure`; this module decides which of
them a folder needs and runs them once. The command line (`app.recipe`) and a library user call the same function:
the command line writes the values into its config, a library user passes them to the constructors.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import Subset

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.transforms import train_transform
from tl_lightning.finetuning.measure import (
    Mirrored,
    frozen_features,
    pixel_baseline,
    pixel_view,
    probe_at_resolutions,
    probe_centre_crop,
    probe_mirrored,
)
from tl_lightning.finetuning.recipe import (
    CONCAT_POOL,
    Choice,
    automatic_choices,
    choose_backbone_lr,
    choose_hflip,
    choose_pool,
    choose_resolution,
    resolution_candidates,
)
from tl_lightning.models.backbones import Backbone, backbone_geometry, build_kwargs, create_backbone, pool_misfit

log = logging.getLogger(__name__)

MODEL, TRAIN_TRANSFORM = "model.", "data.train_transform."
POOL_KEYS = ("model.pool",)
DATA_KEYS = ("model.image_size", "model.crop_pct", "model.crop_mode", "data.train_transform.crop_scale")
VIEW_KEYS = ("model.crop_pct", "model.crop_mode")
LR_KEYS = ("model.lr_mult", "model.lr_spread")
MIRROR_KEYS = ("data.train_transform.hflip",)
# Every setting `plan` can choose, named as `TransferClassifier`'s (model.) and `train_transform`'s
# (data.train_transform.) arguments, which is also where the command line's config holds them.
RECIPE_KEYS = (*POOL_KEYS, *DATA_KEYS, *LR_KEYS, *MIRROR_KEYS)
# At most this many training images (evenly spaced over the classes' sorted files) are measured.
MEASURED_IMAGES = 1000


@dataclass(frozen=True)
class Recipe:
    """The choices `plan` made for one folder and backbone, each with its reason, and the time measuring took.

    >>> recipe = Recipe((Choice("model.image_size", 64, "small images"), Choice("data.train_transform.hflip", 0.0, "")))
    >>> recipe.model_kwargs(), recipe.train_transform_kwargs()
    ({'image_size': 64}, {'hflip': 0.0})
    """

    choices: tuple[Choice, ...] = ()
    seconds: float = 0.0

    def values(self) -> dict[str, Any]:
        """`{key: value}`, keys as `RECIPE_KEYS` name them."""
        return {choice.key: choice.value for choice in self.choices}

    def model_kwargs(self) -> dict[str, Any]:
        """The `TransferClassifier` arguments the recipe chose."""
        return _under(self.values(), MODEL)

    def train_transform_kwargs(self) -> dict[str, Any]:
        """The `data.transforms.train_transform` arguments the recipe chose."""
        return _under(self.values(), TRAIN_TRANSFORM)

    def train_transform(self, **given: Any) -> Callable[..., Any]:
        """`data.transforms.train_transform` with the recipe's arguments over `given`, for a datamodule's
        `train_transform` argument."""
        return partial(train_transform, **(given | self.train_transform_kwargs()))

    def lines(self) -> list[str]:
        """One line per choice: `recipe: key=value because reason`."""
        return [choice.line() for choice in self.choices]


def _under(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {key.removeprefix(prefix): value for key, value in values.items() if key.startswith(prefix)}


def plan(
    datamodule: ImageFolderDataModule,
    backbone: str,
    *,
    pretrained: bool = True,
    weights_file: str | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Recipe:
    """Choose every `RECIPE_KEYS` setting not in `fixed` from `datamodule`'s training images under `backbone`.

    `fixed` holds the settings the user gave (keys as in `RECIPE_KEYS`); they are not chosen, and the choices that
    depend on them (the crops on the resolution, the measurements on the pooling) use them. `datamodule` is read as
    it is: its split, its images' short sides and its eval preprocessing. Deterministic for a given folder and
    backbone: the measurements run in eval mode on evenly spaced images, and leave the random number generators as
    they found them (training draws the same numbers with or without them).
    """
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        choices = _plan(datamodule, backbone, pretrained, weights_file, dict(backbone_kwargs or {}), dict(fixed or {}))
    return Recipe(tuple(choices), round(time.perf_counter() - started, 1))


def _plan(
    scan: ImageFolderDataModule,
    name: str,
    pretrained: bool,
    weights_file: str | None,
    kwargs: dict[str, Any],
    fixed: dict[str, Any],
) -> list[Choice]:
    wanted = [key for key in RECIPE_KEYS if key not in fixed]
    if not wanted:
        return []
    pool = fixed.get("model.pool")
    choices = []
    if "model.pool" in wanted:  # first: every measurement below reads the features pooled as the model will pool them
        given = kwargs.get("global_pool")
        choices.append(choose_pool(name, None if given else pool_misfit(name, CONCAT_POOL, kwargs), given))
        pool = choices[-1].value
    wanted = [key for key in wanted if key not in POOL_KEYS]
    if not wanted:
        return choices
    native, stride, crop_pct = backbone_geometry(name, kwargs)
    sides = scan.short_sides()
    median = statistics.median(sides or [native])
    given = fixed.get("model.image_size")
    candidates = resolution_candidates(median, native, stride) if "model.image_size" in wanted else []
    spread = evenly_spaced(len(scan.samples("train")), MEASURED_IMAGES)

    def images(config: dict) -> Subset:  # the training images under `config`'s eval preprocessing
        return Subset(scan.dataset("train", train=False, data_config=config), spread)

    lr_wanted = [key for key in wanted if key in LR_KEYS]
    mirror_wanted = any(key in wanted for key in MIRROR_KEYS)
    view_wanted = any(key in wanted for key in VIEW_KEYS)
    probed = bool(lr_wanted or view_wanted or mirror_wanted)  # these read the probe at the resolution used
    backbone = _backbone(name, pretrained, weights_file, build_kwargs(kwargs, pool)) if candidates or probed else None
    features = frozen_features(backbone.model, images) if backbone is not None else None
    measured = probe_at_resolutions(features, backbone.data_config, candidates) if candidates else {}
    used = int(given or choose_resolution(median, native, measured or None).value)
    centre = None
    if probed and used not in measured:
        measured |= probe_at_resolutions(features, backbone.data_config, [used])
    if view_wanted and median >= used:
        centre = probe_centre_crop(features, backbone.data_config, used)
    count = len(scan.samples("train"))
    data_wanted = [key for key in wanted if key in DATA_KEYS]
    mode = fixed.get("model.crop_mode")
    choices += automatic_choices(
        sides, count, native, stride, crop_pct, data_wanted, given, measured or None, centre, mode and str(mode)
    )
    if lr_wanted or mirror_wanted:
        pixels, pixels_mirrored = pixel_baseline(images(pixel_view(backbone.data_config)))
        log.info(
            "recipe: an SVM on the training images' pixels: cross-validated accuracy %.3f +- %.3f",
            pixels.accuracy,
            pixels.stderr,
        )
    if lr_wanted:
        choices += [c for c in choose_backbone_lr(measured[used], pixels) if c.key in lr_wanted]
    if mirror_wanted:
        mirrored = frozen_features(backbone.model, lambda config: Mirrored(images(config)))
        features_mirrored = probe_mirrored(features, mirrored, backbone.data_config, used, measured[used].c)
        choices.append(choose_hflip(features_mirrored, pixels_mirrored))
    return choices


def _backbone(name: str, pretrained: bool, weights_file: str | None, kwargs: dict[str, Any]) -> Backbone:
    built = create_backbone(name, pretrained, weights_file, **kwargs)
    built.model.eval()
    return built


def evenly_spaced(count: int, limit: int) -> list[int]:
    """At most `limit` indices evenly spaced over `count` (the samples are sorted by class: each class is kept)."""
    return list(range(0, count, max(1, count // limit)))[:limit]
