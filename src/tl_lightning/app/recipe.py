"""Fill the config's `auto` values from the data, before the model is built: one logged line per choice.

The rules live in `finetuning.recipe` (plain functions, usable without Hydra); this module finds which keys the
config leaves `auto`, asks for them, writes the answers into the config (so `config.yaml` holds what ran) and
rebuilds the datamodule's training transform when its settings changed.
"""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tl_lightning.app.checks import AUTO
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.recipe import BOLD_LR_MULT, Choice, automatic_choices, choose_lr_mult, domain_shift
from tl_lightning.models.backbones import backbone_geometry
from tl_lightning.models.module import TransferClassifier

log = logging.getLogger(__name__)

AUTO_KEYS = ("model.image_size", "model.crop_pct", "data.train_transform.crop_scale")


def resolve_recipe(cfg: DictConfig, datamodule: ImageFolderDataModule) -> list[Choice]:
    """Replace every `auto` among `AUTO_KEYS` in `cfg` by the recipe's choice for `datamodule`'s training images."""
    wanted = [key for key in AUTO_KEYS if OmegaConf.select(cfg, key, default=None) == AUTO]
    if not wanted:
        return []
    native, stride, crop_pct = backbone_geometry(str(cfg.model.backbone), cfg.model.get("backbone_kwargs"))
    size = cfg.model.get("image_size")
    count = len(datamodule.samples("train"))
    choices = automatic_choices(
        datamodule.short_sides(), count, native, stride, crop_pct, wanted, None if size == AUTO else size
    )
    for choice in choices:
        OmegaConf.update(cfg, choice.key, choice.value, merge=False)
        log.info(choice.line())
    if any(choice.key.startswith("data.train_transform.") for choice in choices):
        datamodule.build_train_transform = instantiate(cfg.data.train_transform)
    return choices


def model_placeholders(cfg: DictConfig) -> dict[str, float]:
    """What the model is built with while an `auto` lr_mult waits for the built backbone to measure the shift."""
    return {"lr_mult": BOLD_LR_MULT} if cfg.model.get("lr_mult") == AUTO else {}


def resolve_model_recipe(cfg: DictConfig, model: TransferClassifier, datamodule: ImageFolderDataModule) -> list[Choice]:
    """Choose `model.lr_mult` (when `auto`) from the domain shift of the training images under the model's backbone.

    Set on the built model's hyperparameters, which `configure_optimizers` reads and checkpoints save.
    """
    if cfg.model.get("lr_mult") != AUTO:
        return []
    choice = choose_lr_mult(domain_shift(model.backbone, datamodule.eval_sample()), BOLD_LR_MULT)
    model.hparams.lr_mult = choice.value
    OmegaConf.update(cfg, choice.key, choice.value, merge=False)
    log.info(choice.line())
    return [choice]
