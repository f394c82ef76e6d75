"""Decide the config's `auto` values from the data before any object is built: one logged line per choice.

The rules live in `finetuning.recipe` and the measurements in `finetuning.measure` (plain functions, usable without
Hydra). This module finds which keys the config leaves `auto`, reads the training images through a datamodule
built from the config as it is (a scan: its split and short sides), measures what the rules need on the pretrained
backbone (a linear probe at candidate resolutions, under the weights' centre crop and on mirrored images, an SVM on
the raw pixels), and writes the answers into the config, so the datamodule and the model are then built from
decided values and `config.yaml` holds what ran.
"""

from __future__ import annotations

import logging
import statistics

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset

from tl_lightning.app.checks import AUTO
from tl_lightning.data.datamodule import ImageFolderDataModule
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

DATA_KEYS = ("model.image_size", "model.crop_pct", "model.crop_mode", "data.train_transform.crop_scale")
VIEW_KEYS = ("model.crop_pct", "model.crop_mode")
LR_KEYS = ("model.lr_mult", "model.lr_spread")
MIRROR_KEYS = ("data.train_transform.hflip",)
POOL_KEYS = ("model.pool",)
# At most this many training images (evenly spaced over the classes' sorted files) are measured.
MEASURED_IMAGES = 1000


def plan_recipe(cfg: DictConfig, scan: ImageFolderDataModule) -> list[Choice]:
    """The recipe's choice for every `auto` key of `cfg`, from `scan`'s training images; `cfg` is not changed.

    Deterministic for a given folder and backbone: the measurements run in eval mode on evenly spaced images, and
    leave the random number generators as they found them (training draws the same numbers with or without them).
    """
    with torch.random.fork_rng(devices=[]):
        return _plan(cfg, scan)


def _plan(cfg: DictConfig, scan: ImageFolderDataModule) -> list[Choice]:
    keys = (*POOL_KEYS, *DATA_KEYS, *LR_KEYS, *MIRROR_KEYS)
    wanted = [key for key in keys if OmegaConf.select(cfg, key, default=None) == AUTO]
    if not wanted:
        return []
    name, kwargs = str(cfg.model.backbone), _backbone_kwargs(cfg)
    pool = cfg.model.get("pool")
    choices = []
    if pool == AUTO:  # first: every measurement below reads the features pooled as the model will pool them
        given = kwargs.get("global_pool")
        choices.append(choose_pool(name, None if given else pool_misfit(name, CONCAT_POOL, kwargs), given))
        pool = choices[-1].value
    wanted = [key for key in wanted if key not in POOL_KEYS]
    if not wanted:
        return choices
    native, stride, crop_pct = backbone_geometry(name, kwargs)
    sides = scan.short_sides()
    median = statistics.median(sides or [native])
    size = cfg.model.get("image_size")
    given = None if size == AUTO else size
    candidates = resolution_candidates(median, native, stride) if size == AUTO else []
    spread = evenly_spaced(len(scan.samples("train")), MEASURED_IMAGES)

    def images(config: dict) -> Subset:  # the training images under `config`'s eval preprocessing, via the scan
        return Subset(scan.dataset("train", train=False, data_config=config), spread)

    lr_wanted = [key for key in wanted if key in LR_KEYS]
    mirror_wanted = any(key in wanted for key in MIRROR_KEYS)
    view_wanted = any(key in wanted for key in VIEW_KEYS)
    probed = bool(lr_wanted or view_wanted or mirror_wanted)  # these read the probe at the resolution used
    backbone = _backbone(cfg, build_kwargs(kwargs, pool)) if candidates or probed else None
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
    mode = cfg.model.get("crop_mode")
    given_mode = None if mode in (None, AUTO) else str(mode)
    choices += automatic_choices(
        sides, count, native, stride, crop_pct, data_wanted, given, measured or None, centre, given_mode
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


def apply_recipe(cfg: DictConfig, choices: list[Choice]) -> None:
    """Write each choice into `cfg` and log its line."""
    for choice in choices:
        OmegaConf.update(cfg, choice.key, choice.value, merge=False)
        log.info(choice.line())


def _backbone_kwargs(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.model.get("backbone_kwargs") or OmegaConf.create({}))


def _backbone(cfg: DictConfig, kwargs: dict) -> Backbone:
    model = cfg.model
    built = create_backbone(str(model.backbone), bool(model.pretrained), model.get("weights_file"), **kwargs)
    built.model.eval()
    return built


def evenly_spaced(count: int, limit: int) -> list[int]:
    """At most `limit` indices evenly spaced over `count` (the samples are sorted by class: each class is kept)."""
    return list(range(0, count, max(1, count // limit)))[:limit]
