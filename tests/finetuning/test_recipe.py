"""The recipe's automatic choices: what they choose, that they follow the data, and that a run logs and keeps them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from conftest import compose_train, folder_overrides, write_images
from PIL import Image

from tl_lightning.data.images import ImageDataset, short_sides
from tl_lightning.data.transforms import eval_transform
from tl_lightning.finetuning.measure import (
    MirrorScore,
    ProbeScore,
    best_resolution,
    cross_validate_probe,
    mirror_test,
    pixel_baseline,
)
from tl_lightning.finetuning.recipe import (
    CONCAT_POOL,
    automatic_choices,
    choose_backbone_lr,
    choose_eval_view,
    choose_hflip,
    choose_pool,
    choose_resolution,
    choose_train_crop,
    resolution_candidates,
)

CROPS = ("model.image_size", "model.crop_pct", "model.crop_mode", "data.train_transform.crop_scale")
HFLIP = "data.train_transform.hflip"


def score(accuracy: float, stderr: float = 0.01) -> ProbeScore:
    return ProbeScore(c=1.0, accuracy=accuracy, stderr=stderr, folds=5)


def test_small_images_measure_candidate_sizes_and_large_ones_keep_the_weights_own():
    assert resolution_candidates(28, native=224, stride=32) == [96, 128, 160, 224]
    assert resolution_candidates(100, native=160, stride=32) == [96, 128, 160]
    assert resolution_candidates(300, native=224, stride=32) == []
    assert resolution_candidates(48, native=224, stride=64) == [128, 224]  # only sizes the stride divides
    assert choose_resolution(500, native=380).value == 380
    assert choose_resolution(500, native=380, measured={128: score(0.9)}).value == 380  # large: nothing to measure


def test_the_weights_own_resolution_stays_unless_a_smaller_size_beats_it_by_more_than_a_standard_error():
    close = {96: score(0.80), 128: score(0.905), 160: score(0.91), 224: score(0.90)}
    assert best_resolution(close, native=224) == 224  # 0.90 is within 0.01 of 0.91
    chosen = choose_resolution(28, native=224, measured=close)
    assert chosen.value == 224 and "128 px 0.905" in chosen.because and "small" in chosen.because
    beaten = {96: score(0.80), 128: score(0.905), 160: score(0.91), 224: score(0.85)}
    assert best_resolution(beaten, native=224) == 128  # then the smallest within one SE of the best
    assert "a smaller size beats 224 px" in choose_resolution(28, native=224, measured=beaten).because
    clear = {96: score(0.80, 0.005), 128: score(0.85, 0.005), 224: score(0.95, 0.005)}
    assert best_resolution(clear, native=224) == 224


def test_a_probe_s_standard_error_is_the_binomial_one_of_its_held_out_predictions():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    features = torch.randn(200, 8, generator=g) + labels[:, None] * 0.8
    measured = cross_validate_probe(features, labels)
    assert 0.55 < measured.accuracy < 0.95
    assert abs(measured.stderr - (measured.accuracy * (1 - measured.accuracy) / 200) ** 0.5) < 1e-9


def test_the_cross_validated_probe_tells_separable_features_from_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    separable = torch.randn(60, 32, generator=g) + torch.nn.functional.one_hot(labels, 32) * 4
    noise = torch.randn(60, 32, generator=g)
    good, bad = cross_validate_probe(separable, labels), cross_validate_probe(noise, labels)
    assert good.accuracy > 0.95 and bad.accuracy < 0.6 and good.folds == bad.folds == 5
    assert bad.c <= good.c  # noise needs at least as much L2
    assert cross_validate_probe(noise[:8], labels[:8] % 2).folds == 3  # k: the smallest class (3 of 8)


def test_train_crops_pair_with_the_eval_view_and_are_imagenet_strength_only_with_many_images():
    assert choose_train_crop(25, resolution=64, train_images=100, eval_view="center").value == [0.75, 1.0]
    assert choose_train_crop(500, resolution=224, train_images=800, eval_view="squash").value == [0.75, 1.0]
    assert choose_train_crop(500, resolution=224, train_images=800, eval_view="center").value == [0.35, 1.0]
    assert choose_train_crop(500, resolution=224, train_images=50_000, eval_view="center").value == [0.08, 1.0]


def test_eval_sees_the_whole_image_unless_the_weights_crop_measures_better_by_a_standard_error():
    def view(*choices):
        return {c.key: c.value for c in choices}

    whole = {"model.crop_pct": 1.0, "model.crop_mode": "squash"}
    assert view(*choose_eval_view(25, 64, 0.875, score(0.5), score(0.9))) == whole  # small: nothing to crop
    assert view(*choose_eval_view(500, 224, 0.875)) == whole  # large, unmeasured
    assert view(*choose_eval_view(500, 224, 0.875, score(0.80, 0.02), score(0.81))) == whole  # within one SE
    cropped = choose_eval_view(500, 224, 0.875, score(0.80, 0.02), score(0.83))
    assert view(*cropped) == {"model.crop_pct": 0.875, "model.crop_mode": "center"}
    assert "0.800 +- 0.020 on the whole image and 0.830 on the weights' 0.875 centre crop" in cropped[0].because


def test_squash_evaluates_the_whole_image_where_the_centre_crop_cuts_its_sides():
    import numpy as np

    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :16] = 255  # a white band on the left fifth, outside any centre crop of a 2:1 image
    config = {"input_size": (3, 32, 32), "mean": (0.0,) * 3, "std": (1.0,) * 3, "crop_pct": 1.0}
    squashed = eval_transform(config | {"crop_mode": "squash"})(image=image)["image"]
    centred = eval_transform(config | {"crop_mode": "center"})(image=image)["image"]
    assert squashed.shape == centred.shape == (3, 32, 32)
    assert squashed[:, :, :5].mean() > 0.9 and centred.max() == 0.0
    assert torch.equal(eval_transform(config)(image=image)["image"], centred)  # timm's default mode


def test_choices_follow_the_images_and_only_fill_the_keys_asked_for(tmp_path: Path):
    small = write_images(tmp_path / "small", size=24)
    large = write_images(tmp_path / "large", size=300)
    files = {name: sorted(folder.rglob("*.png")) for name, folder in (("small", small), ("large", large))}
    assert short_sides(files["small"]) == [24] * 18
    measured = {96: score(0.9), 128: score(0.95), 224: score(0.90)}  # 224 beaten by more than a standard error
    chosen = {
        n: {c.key: c.value for c in automatic_choices(short_sides(f), len(f), 224, 32, 0.875, CROPS, None, measured)}
        for n, f in files.items()
    }
    assert chosen["small"] == {
        "model.image_size": 128,
        "model.crop_pct": 1.0,
        "model.crop_mode": "squash",
        "data.train_transform.crop_scale": [0.75, 1.0],
    }
    assert chosen["large"] == {
        "model.image_size": 224,
        "model.crop_pct": 1.0,
        "model.crop_mode": "squash",
        "data.train_transform.crop_scale": [0.75, 1.0],
    }
    centre = automatic_choices(short_sides(files["large"]), 18, 224, 32, 0.875, CROPS, None, measured, score(0.99))
    centred = {c.key: c.value for c in centre}  # measured better than the whole image: timm's protocol
    assert centred["model.crop_pct"] == 0.875 and centred["data.train_transform.crop_scale"] == [0.35, 1.0]
    # A view the user gave is what the train crop pairs with.
    given = automatic_choices(short_sides(files["large"]), 18, 224, 32, 0.875, CROPS, None, measured, None, "center")
    assert {c.key: c.value for c in given}["data.train_transform.crop_scale"] == [0.35, 1.0]
    # A resolution the user gave is what the crops are judged against; only the keys left auto are filled.
    only = automatic_choices(
        short_sides(files["large"]), len(files["large"]), 224, 32, 0.875, ["model.crop_pct"], image_size=512
    )
    assert [(c.key, c.value) for c in only] == [("model.crop_pct", 1.0)]


def test_the_backbone_moves_gently_and_evenly_where_its_features_beat_the_pixels_and_boldly_where_they_do_not():
    mult, spread = choose_backbone_lr(features=score(0.80), pixels=score(0.40))
    assert (mult.key, mult.value) == ("model.lr_mult", 100.0) and "gently" in mult.because
    assert (spread.key, spread.value) == ("model.lr_spread", "flat")
    mult, spread = choose_backbone_lr(features=score(0.91), pixels=score(0.97))
    assert mult.value == 4.0 and "0.910 against 0.970" in mult.because and spread.value == "geometric"
    tie = choose_backbone_lr(features=score(0.9), pixels=score(0.9))  # a tie: the features add nothing
    assert [c.value for c in tie] == [4.0, "geometric"]


def test_flips_go_only_where_both_the_features_and_the_pixels_score_mirrored_images_lower():
    digits = choose_hflip(MirrorScore(0.88, 0.81, 0.015), MirrorScore(0.96, 0.38, 0.034))
    assert (digits.key, digits.value) == (HFLIP, 0.0) and "0.880 on held-out ones and 0.810" in digits.because
    features_only = choose_hflip(MirrorScore(0.68, 0.63, 0.024), MirrorScore(0.54, 0.53, 0.011))  # radio galaxies
    pixels_only = choose_hflip(MirrorScore(0.55, 0.55, 0.010), MirrorScore(0.33, 0.28, 0.021))  # clip art's layout
    assert features_only.value == pixels_only.value == 0.5
    # A drop within the difference's standard error is not evidence: one mirrored miss at 1.0 keeps flips.
    assert choose_hflip(MirrorScore(1.0, 0.99, 0.01), MirrorScore(1.0, 0.99, 0.01)).value == 0.5


def test_the_mirror_test_scores_held_out_images_with_a_probe_fitted_upright():
    g = torch.Generator().manual_seed(0)
    upright = torch.cat([torch.randn(30, 6, generator=g) + 1.5, torch.randn(30, 6, generator=g) - 1.5])
    labels = torch.tensor([0] * 30 + [1] * 30)
    swapped = mirror_test(upright, -upright, labels, c=1.0)  # mirroring turns one class into the other
    assert swapped.upright > 0.9 and swapped.mirrored < 0.1 and swapped.stderr > 0.1
    half = upright.clone()
    half[::2] = -half[::2]  # every other image's class swapped: the difference is half the images
    assert abs(mirror_test(upright, half, labels, c=1.0).mirrored - swapped.upright / 2) < 0.1


def test_the_pixel_baseline_reads_what_the_raw_pixels_tell(tmp_path: Path):
    folder = write_images(tmp_path / "data", per_class=10, size=20)  # classes differ by their mean colour
    labels = {name: i for i, name in enumerate(sorted(p.name for p in folder.iterdir()))}
    samples = [(path, labels[path.parent.name]) for path in sorted(folder.rglob("*.png"))]
    config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    pixels, mirrored = pixel_baseline(ImageDataset(samples, eval_transform(config)))
    assert pixels.accuracy > 0.9 and mirrored.mirrored > 0.9  # a mirrored image keeps its mean colour
    shuffled = [(path, i % 3) for i, (path, _) in enumerate(samples)]  # labels unrelated to the pixels
    assert pixel_baseline(ImageDataset(shuffled, eval_transform(config)))[0].accuracy < 0.7


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
        assert written.model.crop_mode == "squash" == job.model.data_config["crop_mode"]
        assert written.data.train_transform.crop_scale == [0.75, 1.0]
        assert written.data.train_transform.hflip == 0.5  # classes by colour: a mirrored image keeps its class
        assert job.datamodule.build_train_transform.keywords["hflip"] == 0.5
        assert written.model.lr_mult == job.model.hparams.lr_mult != "auto"
        assert written.model.lr_spread == job.model.hparams.lr_spread != "auto"
        assert written.model.pool == job.model.hparams.pool == CONCAT_POOL
        # Built from the decided values, not patched afterwards: the model's input size, the datamodule's crops.
        assert job.model.data_config["input_size"][-1] == written.model.image_size
        assert job.datamodule.build_train_transform.keywords["crop_scale"] == [0.75, 1.0]
    assert configs[0].replace("out0", "out1") == configs[1]  # deterministic for a given folder
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe: ")]
    for size in (96, 128, 160):  # every candidate measured, and said so
        assert any(line.startswith(f"recipe: probe at {size} px: cross-validated accuracy") for line in logged)
    assert any(line.startswith("recipe: an SVM on the training images' pixels") for line in logged)
    assert any(line.startswith("recipe: a probe fitted on upright training images scores") for line in logged)
    for key in (*CROPS, "model.lr_mult", "model.lr_spread", HFLIP, "model.pool"):
        assert any(line.startswith(f"recipe: {key}=") and " because " in line for line in logged), key
        assert f"# recipe: {key}=" in configs[0]


def test_explicit_values_win_over_the_recipe(tmp_path: Path):
    from tl_lightning.app.train import prepare

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    overrides = [
        *folder_overrides(folder, tmp_path / "out"),
        "model.crop_pct=0.9",
        "model.crop_mode=center",
        "model.lr_mult=7",
        "model.lr_spread=geometric",
        "data.train_transform.crop_scale=[0.5,1.0]",
        "data.train_transform.hflip=0.25",
        "model.pool=avg",
    ]
    job = prepare(compose_train(overrides))
    assert job.model.hparams.pool == "avg" and job.model.head[-1].in_features == job.model.backbone.num_features
    assert job.model.data_config["input_size"][-1] == 32 and job.model.data_config["crop_pct"] == 0.9
    assert job.model.hparams.lr_mult == 7 and job.model.hparams.lr_spread == "geometric"
    assert job.datamodule.build_train_transform.keywords["hflip"] == 0.25
    assert "# recipe:" not in (tmp_path / "out" / "config.yaml").read_text()


def test_measuring_leaves_the_random_state_of_training_alone(tmp_path: Path):
    from tl_lightning.app.recipe import plan_recipe
    from tl_lightning.data.datamodule import ImageFolderDataModule

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    cfg = compose_train([o for o in folder_overrides(folder, tmp_path / "out") if "image_size" not in o])
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    choices = plan_recipe(cfg, ImageFolderDataModule(folder, num_workers=0, audit=False)).choices
    assert torch.equal(torch.rand(4), expected)
    assert {c.key for c in choices} == {*CROPS, "model.lr_mult", "model.lr_spread", HFLIP, "model.pool"}
    assert cfg.model.image_size == "auto"  # the config is written by apply_recipe, not here


def test_large_images_measure_the_weights_centre_crop_against_the_whole_image(tmp_path: Path, caplog):
    from tl_lightning.app.recipe import plan_recipe
    from tl_lightning.data.datamodule import ImageFolderDataModule

    folder = write_images(tmp_path / "data", per_class=10, size=200)  # above test_resnet's 160 px
    cfg = compose_train([o for o in folder_overrides(folder, tmp_path / "out") if "image_size" not in o])
    with caplog.at_level(logging.INFO, logger="tl_lightning"):
        recipe = plan_recipe(cfg, ImageFolderDataModule(folder, num_workers=0, audit=False))
    choices = {c.key: c for c in recipe.choices}
    logged = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("recipe: probe of the weights' 0.950 centre crop at 160 px") for line in logged)
    assert any(line.startswith("recipe: probe at 160 px") for line in logged)  # the whole image, at the same size
    assert choices["model.image_size"].value == 160
    assert choices["model.crop_mode"].value in ("squash", "center")
    assert "on the whole image and" in choices["model.crop_pct"].because


def write_ramps(folder: Path, per_class: int = 15, size: int = 20) -> Path:
    """Two classes of grayscale ramps, dark to bright (`right`) and bright to dark (`left`): a mirrored image is
    the other class, as a mirrored digit is no longer the digit."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size)
    for name, row in (("left", ramp[::-1]), ("right", ramp)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = np.repeat(np.tile(row, (size, 1))[..., None], 3, axis=2) + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / name / f"{name}_{i}.png")
    return folder


def test_a_folder_whose_classes_mirroring_swaps_trains_without_flips(tmp_path: Path, caplog):
    from tl_lightning.app.recipe import plan_recipe
    from tl_lightning.data.datamodule import ImageFolderDataModule

    folder = write_ramps(tmp_path / "data")
    cfg = compose_train([o for o in folder_overrides(folder, tmp_path / "out") if "image_size" not in o])
    with caplog.at_level(logging.INFO, logger="tl_lightning"):
        recipe = plan_recipe(cfg, ImageFolderDataModule(folder, num_workers=0, audit=False))
    choices = {c.key: c for c in recipe.choices}
    assert choices[HFLIP].value == 0.0 and "both lower" in choices[HFLIP].because
    logged = [r.getMessage() for r in caplog.records if "on them mirrored" in r.getMessage()]
    assert len(logged) == 1 and "0.000 on them mirrored" in logged[0]


def test_the_head_reads_average_and_max_pooling_where_the_backbone_s_weights_take_it_and_its_own_pooling_elsewhere():
    from tl_lightning.models.backbones import pool_misfit

    assert choose_pool("test_resnet", pool_misfit("test_resnet", CONCAT_POOL)).value == CONCAT_POOL
    for name in ("test_vit", "test_convnext", "mobilenetv3_small_100"):  # refused by timm, or a weight changes shape
        misfit = pool_misfit(name, CONCAT_POOL)
        kept = choose_pool(name, misfit)
        assert misfit and kept.value is None and misfit in kept.because, name
    assert "conv_head.weight" in pool_misfit("mobilenetv3_small_100", CONCAT_POOL)  # pooled width feeds a conv
    given = choose_pool("test_resnet", None, given="avgmax")  # the backbone's own arguments name one: kept
    assert given.value is None and "backbone.kwargs.global_pool=avgmax" in given.because


def test_a_vit_picked_by_name_keeps_its_own_pooling_and_trains(tmp_path: Path, caplog):
    from tl_lightning.app.train import prepare

    folder = write_images(tmp_path / "data", per_class=6, size=20)
    overrides = [*folder_overrides(folder, tmp_path / "out"), "backbone.name=test_vit", "model.image_size=null"]
    with caplog.at_level(logging.INFO, logger="tl_lightning"):
        job = prepare(compose_train(overrides))
    assert job.model.hparams.pool is None
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe: model.pool=")]
    assert logged and "test_vit keeps its own pooling" in logged[0]
    assert job.model(torch.zeros(2, 3, *job.model.data_config["input_size"][1:])).shape == (2, 3)


def test_a_library_user_plans_the_recipe_without_hydra_and_builds_the_model_and_data_from_it(tmp_path: Path):
    from functools import partial

    from tl_lightning.data.datamodule import ImageFolderDataModule
    from tl_lightning.data.transforms import train_transform
    from tl_lightning.finetuning.plan import plan
    from tl_lightning.models.module import TransferClassifier

    folder = write_images(tmp_path / "data", per_class=10, size=20)
    scan = ImageFolderDataModule(folder, num_workers=0, audit=False)
    scan.prepare_data()
    recipe = plan(scan, "test_resnet", pretrained=False, fixed={"model.image_size": 32, "model.pool": None})
    chosen = recipe.values()
    assert "model.image_size" not in chosen and "model.pool" not in chosen  # the user's values are not chosen
    assert {"model.crop_pct", "model.lr_mult", "data.train_transform.hflip"} <= set(chosen)
    assert all(line.startswith("recipe: ") and " because " in line for line in recipe.lines())
    model = TransferClassifier(
        "test_resnet", num_classes=scan.num_classes, pretrained=False, image_size=32, **recipe.model_kwargs()
    )
    assert model.hparams.lr_mult == chosen["model.lr_mult"] and model.data_config["input_size"][-1] == 32
    data = ImageFolderDataModule(
        folder, num_workers=0, audit=False, train_transform=partial(train_transform, **recipe.train_transform_kwargs())
    )
    assert data.build_train_transform.keywords["hflip"] == chosen["data.train_transform.hflip"]
