"""FrozenFeatureCache: the head trains on cached features exactly as on images, until the first unfreeze."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import tiny_data, tiny_model, tiny_trainer

from tl_lightning.data.transforms import eval_transform, train_transform
from tl_lightning.finetuning.feature_cache import FrozenFeatureCache
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.features import Features


def rank(x) -> int:
    """2 for a `Features` batch, else the image tensor's rank (4)."""
    return x.tensor.ndim if isinstance(x, Features) else x.ndim


class BatchShapes(pl.Callback):
    """Records, per epoch, whether training and validation batches were images (4-D) or features (2-D)."""

    def __init__(self) -> None:
        self.train: dict[int, set[int]] = {}
        self.val: dict[int, set[int]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train.setdefault(trainer.current_epoch, set()).add(rank(batch[0]))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val.setdefault(trainer.current_epoch, set()).add(rank(batch[0]))


def fit(root: Path, milestones: dict, cache=None, epochs: int = 3, **data):
    """A short fit on the shipped Lite0 weights; `cache` is a `FrozenFeatureCache` class (or a subclass) made with
    the fit's schedule, or None. Returns the model, the trainer, the batch shapes and the cache."""
    pl.seed_everything(0)
    model = tiny_model(backbone="tf_efficientnet_lite0", weights_file="package:efficientnet_lite0")
    shapes, schedule = BatchShapes(), LayerFinetuning(milestones=milestones)
    views = data.pop("views", None)
    made = cache(schedule, views=views) if cache else None
    trainer = tiny_trainer(max_epochs=epochs, callbacks=[schedule, shapes, *([made] if made else [])])
    trainer.fit(model, tiny_data(root, model, **({"train_transform": eval_transform} | data)))
    return model, trainer, shapes, made


def test_head_trained_on_cached_features_matches_head_trained_on_images(split_folder: Path):
    # One batch per epoch (24 images, batch 32): the same gradients whatever the order, so the runs must agree.
    plain, plain_trainer, plain_shapes, _ = fit(split_folder, {}, None, batch_size=32)
    cached, cached_trainer, cached_shapes, _ = fit(split_folder, {}, FrozenFeatureCache, batch_size=32)
    assert plain_shapes.train == {0: {4}, 1: {4}, 2: {4}}
    assert cached_shapes.train == {0: {2}, 1: {2}, 2: {2}} and cached_shapes.val == {0: {2}, 1: {2}, 2: {2}}
    for (name, a), b in zip(plain.head.state_dict().items(), cached.head.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    pl.seed_everything(0)
    untrained = tiny_model(backbone="tf_efficientnet_lite0", weights_file="package:efficientnet_lite0")
    assert not torch.allclose(untrained.head.state_dict()["0.weight"], cached.head.state_dict()["0.weight"])
    for key in ("val/acc", "val/loss"):
        assert float(plain_trainer.callback_metrics[key]) == pytest.approx(float(cached_trainer.callback_metrics[key]))
    assert cached_trainer.datamodule.loader_override is None  # handed back at fit end


def test_images_return_at_the_unfreeze(split_folder: Path):
    _, _, shapes, cache = fit(split_folder, {2: "all"}, FrozenFeatureCache, epochs=4)
    assert cache.frozen_epochs == 2
    assert shapes.train == {0: {2}, 1: {2}, 2: {4}, 3: {4}}
    assert shapes.val == {0: {2}, 1: {2}, 2: {4}, 3: {4}}


def test_a_fit_that_fails_in_the_cached_phase_leaves_datamodule_and_trainer_as_they_were(split_folder: Path):
    class Fail(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            assert isinstance(batch[0], Features)  # inside the cached phase
            raise RuntimeError("power cut")

    model = tiny_model()
    data = tiny_data(split_folder, model, train_transform=eval_transform)
    schedule = LayerFinetuning(milestones={2: "all"})
    trainer = tiny_trainer(callbacks=[schedule, FrozenFeatureCache(schedule), Fail()])
    before = trainer.reload_dataloaders_every_n_epochs
    with pytest.raises(RuntimeError, match="power cut"):
        trainer.fit(model, data)
    assert data.loader_override is None and trainer.reload_dataloaders_every_n_epochs == before
    assert rank(next(iter(data.train_dataloader()))[0]) == 4  # images again
    metrics = tiny_trainer().validate(model, data, verbose=False)[0]  # and validation sees images too
    assert metrics["val/samples"] == len(data.samples("val"))


def test_random_transform_needs_views_and_gets_distinct_ones(split_folder: Path):
    augmenting = {"train_transform": train_transform}
    with pytest.raises(ValueError, match=r"training transform is random.*callbacks\.feature_cache\.views=K"):
        fit(split_folder, {}, FrozenFeatureCache, epochs=1, **augmenting)

    class KeepViews(FrozenFeatureCache):
        def on_fit_end(self, trainer, pl_module):
            self.kept = list(self.train_views)
            super().on_fit_end(trainer, pl_module)

    *_, cache = fit(split_folder, {}, KeepViews, epochs=1, views=3, **augmenting)
    assert len(cache.kept) == 3
    assert all(torch.equal(cache.kept[0][1], labels) for _, labels in cache.kept)  # same images, same order
    assert not torch.allclose(cache.kept[0][0], cache.kept[1][0])  # other augmentations, other features


def test_caching_refuses_a_backbone_that_is_not_constant(split_folder: Path):
    model = tiny_model()
    schedule = LayerFinetuning(milestones={}, train_bn=True)
    trainer = tiny_trainer(callbacks=[schedule, FrozenFeatureCache(schedule)])
    with pytest.raises(ValueError, match="train_bn=true"):
        trainer.fit(model, tiny_data(split_folder, model, train_transform=eval_transform))
    with pytest.raises(ValueError, match="needs the run's LayerFinetuning"):
        tiny_trainer(callbacks=[FrozenFeatureCache()]).fit(tiny_model(), tiny_data(split_folder, model))
    with pytest.raises(ValueError, match="positive number"):
        FrozenFeatureCache(views=0)


def test_feature_cache_from_the_command_line_config(flat_folder: Path, tmp_path: Path):
    from conftest import compose_train, folder_overrides

    from tl_lightning.app.train import run

    overrides = [*folder_overrides(flat_folder, tmp_path), "callbacks=[default,feature_cache]", "augment=none"]
    cfg = compose_train(overrides)
    assert cfg.callbacks.feature_cache._target_ == "tl_lightning.finetuning.feature_cache.FrozenFeatureCache"
    assert "test/acc" in run(cfg)
