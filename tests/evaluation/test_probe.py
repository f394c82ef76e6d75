"""The linear probe: cached features reused, invalidated by a changed file, the verdict table, and digits."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose_train, tiny_data, tiny_model
from lightning.pytorch.callbacks import TQDMProgressBar

import tl_lightning.models.features as features
from tl_lightning.app.train import probe
from tl_lightning.evaluation.probe import interpret, linear_probe


@pytest.fixture
def extractions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts backbone passes over a split (one entry per split extracted)."""
    calls: list[int] = []
    real = features.extract_features

    def counted(backbone, loader):
        calls.append(len(loader.dataset))
        return real(backbone, loader)

    monkeypatch.setattr(features, "extract_features", counted)
    return calls


def pretrained_setup(root: Path):
    model = tiny_model(backbone="tf_efficientnet_lite0", weights_file="package:efficientnet_lite0")
    dm = tiny_data(root, data_config=model.data_config)
    dm.setup("fit")
    return model, dm


def test_probe_features_are_cached_and_reused_until_a_file_changes(
    split_folder: Path, tmp_path: Path, extractions: list[int]
):
    model, dm = pretrained_setup(split_folder)
    first = linear_probe(model, dm, tmp_path / "features")
    assert extractions == [24, 9, 9] and not first.from_cache
    second = linear_probe(model, dm, tmp_path / "features")
    assert extractions == [24, 9, 9] and second.from_cache  # no backbone pass at all
    assert second.accuracy == first.accuracy
    assert len(list((tmp_path / "features").glob("*.pt"))) == 1

    changed = next((split_folder / "val" / "cat").iterdir())
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = linear_probe(model, dm, tmp_path / "features")
    assert not third.from_cache and len(extractions) == 6

    other = tiny_model(backbone="tf_efficientnet_lite0", weights_file="package:efficientnet_lite0", image_size=48)
    dm.data_config = dict(other.data_config)
    assert not linear_probe(other, dm, tmp_path / "features").from_cache  # other preprocessing, other key

    dm.data_config = dict(model.data_config)
    assert linear_probe(model, dm, tmp_path / "features").from_cache
    lite0 = {"backbone": "tf_efficientnet_lite0", "weights_file": "package:efficientnet_lite0"}
    pooled = tiny_model(**lite0, pool="fastcatavgmax")
    fresh = linear_probe(pooled, dm, tmp_path / "features")  # other pooling: other features, twice as wide
    assert not fresh.from_cache and fresh.feature_dim == 2 * first.feature_dim


def test_random_weights_are_probed_but_never_cached(split_folder: Path, tmp_path: Path, extractions: list[int]):
    model = tiny_model()
    dm = tiny_data(split_folder, data_config=model.data_config)
    dm.setup("fit")
    for _ in range(2):
        assert not linear_probe(model, dm, tmp_path / "features").from_cache
    assert len(extractions) == 6 and not (tmp_path / "features").exists()


@pytest.mark.parametrize(
    ("accuracy", "preset"),
    [
        (0.99, "feature_extraction"),
        (0.971, "feature_extraction"),
        (0.95, "lp_ft"),
        (0.88, "lp_ft"),
        (0.72, "lp_ft"),
        (0.6, "lp_ft"),
        (0.5, "full"),
        (0.1, "full"),
    ],
)
def test_interpretation_table(accuracy: float, preset: str):
    assert f"finetuning={preset}" in interpret(accuracy)[1]


class CountingBar(TQDMProgressBar):
    """The trainer's progress bar, counting the images its predict passes show."""

    images = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        CountingBar.images += len(batch[1])


@pytest.mark.slow
def test_probe_task_on_digits_writes_its_verdict(tmp_path: Path):
    CountingBar.images = 0
    bar = "+callbacks.bar._target_=test_probe.CountingBar"
    cache = f"paths.cache_dir={tmp_path / 'cache'}"  # features of an earlier probe in the session would be reused
    result = probe(compose_train(["task=probe", f"paths.output_dir={tmp_path}", cache, *FAST, bar]))
    assert CountingBar.images == 500 + 297 + 1000  # every split, through the trainer's predict loop
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["accuracy"] == pytest.approx(result["accuracy"])
    assert set(saved["accuracy"]) == {"train", "val", "test"} and saved["train_images"] == 500
    assert saved["accuracy"]["val"] > 0.5  # real ImageNet features on real digits: far above chance (0.1)
    assert saved["recommendation"] == interpret(saved["accuracy"]["val"])[1]


def test_the_probe_fitted_in_the_training_rows_span_is_the_probe_fitted_on_every_feature():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tl_lightning.models.features import RowSpace, fit_probe, probe_as_linear, probe_pipeline

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 4
    features = torch.randn(40, 300, generator=g) + labels[:, None].float() * torch.randn(1, 300, generator=g)
    held_out = torch.randn(10, 300, generator=g)
    probe = probe_pipeline(c=0.1).fit(features.numpy(), labels.numpy())
    assert probe[1].components_.shape == (300, 39)  # 40 centred rows span 39 directions: fitted on 39, not 300
    assert len(fit_probe(features, labels, c=0.1)) == 2  # the kept probe: fitted on every feature

    def fitted(*steps):  # to the optimum, so the two fits can be compared
        pipeline = make_pipeline(StandardScaler(), *steps, LogisticRegression(C=0.1, max_iter=5000, tol=1e-10))
        return pipeline.fit(features.numpy(), labels.numpy()).decision_function(held_out.numpy())

    assert np.allclose(fitted(RowSpace()), fitted(), atol=1e-3)
    weight, bias = probe_as_linear(probe, num_classes=4)  # the projection and the scaler folded into one layer
    expected = torch.as_tensor(probe.decision_function(held_out.numpy())).float()
    assert torch.allclose(held_out @ weight.T + bias, expected, atol=1e-4)
    assert RowSpace().fit(np.ones((50, 8))).components_ is None  # more rows than features: nothing to gain
