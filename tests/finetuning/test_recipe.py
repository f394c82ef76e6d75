"""The recipe's automatic choices: what they choose, that they follow the data, and that a run logs and keeps them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from conftest import compose_train, folder_overrides, write_images

from tl_lightning.data.images import ImageDataset, short_sides
from tl_lightning.data.transforms import eval_transform
from tl_lightning.finetuning.measure import ProbeScore, best_resolution, cross_validate_probe, pixel_baseline
from tl_lightning.finetuning.recipe import (
    automatic_choices,
    choose_crops,
    choose_lr_mult,
    choose_resolution,
    resolution_candidates,
)

CROPS = ("model.image_size", "model.crop_pct", "data.train_transform.crop_scale")


def score(accuracy: float, stderr: float = 0.01) -> ProbeScore:
    return ProbeScore(c=1.0, accuracy=accuracy, stderr=stderr, folds=5)


def test_small_images_measure_candidate_sizes_and_large_ones_keep_the_weights_own():
    assert resolution_candidates(28, native=224, stride=32) == [96, 128, 160, 224]
    assert resolution_candidates(100, native=160, stride=32) == [96, 128, 160]
    assert resolution_candidates(300, native=224, stride=32) == []
    assert resolution_candidates(48, native=224, stride=64) == [128, 224]  # only sizes the stride divides
    assert choose_resolution(500, native=380).value == 380
    assert choose_resolution(500, native=380, measured={128: score(0.9)}).value == 380  # large: nothing to measure


def test_the_measured_resolution_is_the_smallest_within_one_standard_error_of_the_best():
    measured = {96: score(0.80), 128: score(0.905), 160: score(0.91), 224: score(0.90)}
    assert best_resolution(measured) == 128  # 0.905 is within 0.01 of 0.91
    chosen = choose_resolution(28, native=224, measured=measured)
    assert chosen.value == 128 and "128 px 0.905" in chosen.because and "small" in chosen.because
    clear = {96: score(0.80, 0.005), 128: score(0.85, 0.005), 224: score(0.95, 0.005)}
    assert best_resolution(clear) == 224


def test_the_cross_validated_probe_tells_separable_features_from_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    separable = torch.randn(60, 32, generator=g) + torch.nn.functional.one_hot(labels, 32) * 4
    noise = torch.randn(60, 32, generator=g)
    good, bad = cross_validate_probe(separable, labels), cross_validate_probe(noise, labels)
    assert good.accuracy > 0.95 and bad.accuracy < 0.6 and good.folds == bad.folds == 5
    assert bad.c <= good.c  # noise needs at least as much L2
    assert cross_validate_probe(noise[:8], labels[:8] % 2).folds == 3  # k: the smallest class (3 of 8)


def test_crops_are_mild_for_small_images_and_imagenet_strength_only_with_many_images():
    small = {c.key: c.value for c in choose_crops(25, resolution=64, train_images=100, weights_crop_pct=0.875)}
    assert small == {"model.crop_pct": 1.0, "data.train_transform.crop_scale": [0.75, 1.0]}
    few = {c.key: c.value for c in choose_crops(500, resolution=224, train_images=800, weights_crop_pct=0.875)}
    assert few == {"model.crop_pct": 0.875, "data.train_transform.crop_scale": [0.35, 1.0]}
    many = {c.key: c.value for c in choose_crops(500, resolution=224, train_images=50_000, weights_crop_pct=0.9)}
    assert many == {"model.crop_pct": 0.9, "data.train_transform.crop_scale": [0.08, 1.0]}


def test_choices_follow_the_images_and_only_fill_the_keys_asked_for(tmp_path: Path):
    small = write_images(tmp_path / "small", size=24)
    large = write_images(tmp_path / "large", size=300)
    files = {name: sorted(folder.rglob("*.png")) for name, folder in (("small", small), ("large", large))}
    assert short_sides(files["small"]) == [24] * 18
    measured = {96: score(0.9), 128: score(0.95), 224: score(0.94)}
    chosen = {
        n: {c.key: c.value for c in automatic_choices(short_sides(f), len(f), 224, 32, 0.875, CROPS, None, measured)}
        for n, f in files.items()
    }
    assert chosen["small"] == {
        "model.image_size": 128,
        "model.crop_pct": 1.0,
        "data.train_transform.crop_scale": [0.75, 1.0],
    }
    assert chosen["large"] == {
        "model.image_size": 224,
        "model.crop_pct": 0.875,
        "data.train_transform.crop_scale": [0.35, 1.0],
    }
    # A resolution the user gave is what the crops are judged against; only the keys left auto are filled.
    only = automatic_choices(
        short_sides(files["large"]), len(files["large"]), 224, 32, 0.875, ["model.crop_pct"], image_size=512
    )
    assert [(c.key, c.value) for c in only] == [("model.crop_pct", 1.0)]


def test_the_backbone_moves_gently_where_its_features_beat_the_pixels_and_boldly_where_they_do_not():
    fit = choose_lr_mult(features=score(0.80), pixels=score(0.40))
    assert (fit.key, fit.value) == ("model.lr_mult", 100.0) and "gently" in fit.because
    unfit = choose_lr_mult(features=score(0.91), pixels=score(0.97))
    assert unfit.value == 4.0 and "0.910 against 0.970" in unfit.because
    assert choose_lr_mult(features=score(0.9), pixels=score(0.9)).value == 4.0  # a tie: the features add nothing


def test_the_pixel_baseline_reads_what_the_raw_pixels_tell(tmp_path: Path):
    folder = write_images(tmp_path / "data", per_class=10, size=20)  # classes differ by their mean colour
    labels = {name: i for i, name in enumerate(sorted(p.name for p in folder.iterdir()))}
    samples = [(path, labels[path.parent.name]) for path in sorted(folder.rglob("*.png"))]
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    assert pixel_baseline(ImageDataset(samples, eval_transform(config))).accuracy > 0.9
    shuffled = [(path, i % 3) for i, (path, _) in enumerate(samples)]  # labels unrelated to the pixels
    assert pixel_baseline(ImageDataset(shuffled, eval_transform(config))).accuracy < 0.7


def test_a_run_logs_each_choice_and_writes_it_to_config_yaml_the_same_every_time(tmp_path: Path, caplog):
    from omegaconf import OmegaConf

    from tl_lightning.app.train import prepare

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    configs = []
    for attempt in range(2):
        overrides = [o for o in folder_overrides(folder, tmp_path / f"out{attempt}") if "image_size" not in o]
        cfg = compose_train(overrides)
        assert cfg.model.image_size == cfg.model.lr_mult == "auto"
        with caplog.at_level(logging.INFO, logger="tl_lightning"):
            job = prepare(cfg)
        configs.append((tmp_path / f"out{attempt}" / "config.yaml").read_text())
        written = OmegaConf.create(configs[-1])
        assert written.model.image_size in (96, 128, 160) and written.model.crop_pct == 1.0  # test_resnet: 160 px
        assert written.data.train_transform.crop_scale == [0.75, 1.0]
        assert written.model.lr_mult == job.model.hparams.lr_mult != "auto"
        # Built from the decided values, not patched afterwards: the model's input size, the datamodule's crops.
        assert job.model.data_config["input_size"][-1] == written.model.image_size
        assert job.datamodule.build_train_transform.keywords["crop_scale"] == [0.75, 1.0]
    assert configs[0].replace("out0", "out1") == configs[1]  # deterministic for a given folder
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe: ")]
    for size in (96, 128, 160):  # every candidate measured, and said so
        assert any(line.startswith(f"recipe: probe at {size} px: cross-validated accuracy") for line in logged)
    assert any(line.startswith("recipe: an SVM on the training images' pixels") for line in logged)
    for key in (*CROPS, "model.lr_mult"):
        assert any(line.startswith(f"recipe: {key}=") and " because " in line for line in logged), key
        assert f"# recipe: {key}=" in configs[0]


def test_explicit_values_win_over_the_recipe(tmp_path: Path):
    from tl_lightning.app.train import prepare

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    overrides = [
        *folder_overrides(folder, tmp_path / "out"),
        "model.crop_pct=0.9",
        "model.lr_mult=7",
        "data.train_transform.crop_scale=[0.5,1.0]",
    ]
    job = prepare(compose_train(overrides))
    assert job.model.data_config["input_size"][-1] == 32 and job.model.data_config["crop_pct"] == 0.9
    assert job.model.hparams.lr_mult == 7
    assert "# recipe:" not in (tmp_path / "out" / "config.yaml").read_text()


def test_measuring_leaves_the_random_state_of_training_alone(tmp_path: Path):
    from tl_lightning.app.recipe import plan_recipe
    from tl_lightning.data.datamodule import ImageFolderDataModule

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    cfg = compose_train([o for o in folder_overrides(folder, tmp_path / "out") if "image_size" not in o])
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    choices = plan_recipe(cfg, ImageFolderDataModule(folder, num_workers=0, audit=False))
    assert torch.equal(torch.rand(4), expected)
    assert {c.key for c in choices} == {*CROPS, "model.lr_mult"}
    assert cfg.model.image_size == "auto"  # the config is written by apply_recipe, not here
