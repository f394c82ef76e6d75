"""The config's `auto` values, decided from the data before any object is built: one logged line per choice.

`finetuning.plan.plan` measures and decides; this module only reads which keys the config leaves `auto` (the others
are the user's, passed as `fixed`) and writes the recipe's values into the config, so the datamodule and the model
are then built from decided values and `config.yaml` holds what ran.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from tl_lightning.app.checks import AUTO
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.plan import RECIPE_KEYS, Recipe, plan

log = logging.getLogger(__name__)


def plan_recipe(cfg: DictConfig, scan: ImageFolderDataModule) -> Recipe:
    """The recipe for every `auto` key of `cfg`, from `scan`'s training images; `cfg` is not changed."""
    values = {key: OmegaConf.select(cfg, key, default=None) for key in RECIPE_KEYS}
    if AUTO not in values.values():
        return Recipe()
    model = cfg.model
    return plan(
        scan,
        str(model.backbone),
        pretrained=bool(model.pretrained),
        weights_file=model.get("weights_file"),
        backbone_kwargs=OmegaConf.to_container(model.get("backbone_kwargs") or OmegaConf.create({})),
        fixed={key: value for key, value in values.items() if value != AUTO},
    )


def apply_recipe(cfg: DictConfig, recipe: Recipe) -> None:
    """Write each choice into `cfg` and log its line."""
    for choice in recipe.choices:
        OmegaConf.update(cfg, choice.key, choice.value, merge=False)
        log.info(choice.line())
