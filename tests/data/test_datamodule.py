import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.digits import DigitsDataModule
from tl_lightning.data.images import ImageDecodeError, load_rgb
from tl_lightning.data.transforms import eval_transform, train_transform

DATA_CONFIG = {
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 0.875,
}


def test_missing_root_names_it(tmp_path: Path):
    dm = ImageFolderDataModule(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"data.root '.*nope' does not exist"):
        _ = dm.class_names


def test_empty_class_folder_is_named(flat_folder: Path):
    (flat_folder / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"Class folders without usable images: .*empty_class"):
        _ = ImageFolderDataModule(flat_folder).class_names


def test_split_missing_a_class_lists_it(split_folder: Path):
    shutil.rmtree(split_folder / "val" / "dog")
    (split_folder / "val" / "wolf").mkdir()
    Image.new("RGB", (8, 8)).save(split_folder / "val" / "wolf" / "w.png")
    with pytest.raises(ValueError, match=r"Split 'val'.*missing \['dog'\], extra \['wolf'\]"):
        _ = ImageFolderDataModule(split_folder).class_names


def test_hidden_folders_and_non_images_are_not_classes(flat_folder: Path):
    (flat_folder / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(flat_folder / ".ipynb_checkpoints" / "x.png")
    (flat_folder / "cat" / "notes.txt").write_text("not an image")
    dm = ImageFolderDataModule(flat_folder)
    assert dm.class_names == ["cat", "dog", "fox"]
    assert not any(p.suffix == ".txt" for p, _ in dm.samples("train"))


def test_flat_folder_split_is_stratified_seeded_and_disjoint(flat_folder: Path, tmp_path: Path):
    dm = ImageFolderDataModule(flat_folder, val_fraction=0.2, test_fraction=0.2, seed=3)
    counts = {split: {c: len(files) for c, files in dm.splits[split].items()} for split in ("train", "val", "test")}
    assert counts == {
        "train": dict.fromkeys(dm.class_names, 6),
        "val": dict.fromkeys(dm.class_names, 2),
        "test": dict.fromkeys(dm.class_names, 2),
    }
    files = [p for split in ("train", "val", "test") for p, _ in dm.samples(split)]
    assert len(files) == len(set(files)) == 30
    again = ImageFolderDataModule(flat_folder, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert again.samples("val") == dm.samples("val")
    other = ImageFolderDataModule(flat_folder, val_fraction=0.2, test_fraction=0.2, seed=4)
    assert other.samples("val") != dm.samples("val")

    with open(dm.save_split(tmp_path / "split.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val", "test"}


def test_class_too_small_to_split_is_named(tmp_path: Path):
    for name, count in (("big", 6), ("tiny", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(ValueError, match="Class 'tiny' has 1 images"):
        _ = ImageFolderDataModule(tmp_path).splits


def test_class_index_comes_from_train_in_every_split(split_folder: Path):
    dm = ImageFolderDataModule(split_folder)
    for split in ("train", "val", "test"):
        assert {(p.parent.name, label) for p, label in dm.samples(split)} == {("cat", 0), ("dog", 1), ("fox", 2)}


def test_loaders_give_normalised_tensors_of_the_configured_size(split_folder: Path):
    dm = ImageFolderDataModule(split_folder, batch_size=4, num_workers=0, data_config=DATA_CONFIG)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert y.tolist() == [0, 0, 0, 1]


def test_eval_transform_is_deterministic_and_train_transform_is_not():
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    evaluate = eval_transform(DATA_CONFIG)
    assert torch.equal(evaluate(image=image)["image"], evaluate(image=image)["image"])
    train = train_transform(DATA_CONFIG, color_jitter=0.3, affine_degrees=10)
    assert not torch.equal(train(image=image)["image"], train(image=image)["image"])


def test_odd_images_decode_to_rgb(tmp_path: Path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 6), 100, dtype=np.uint8), mode="L").save(gray)
    assert load_rgb(gray).shape == (4, 6, 3) and (load_rgb(gray) == 100).all()

    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 5), (10, 20, 30, 40)).save(rgba)
    assert load_rgb(rgba)[0, 0].tolist() == [10, 20, 30]

    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(deep)
    assert load_rgb(deep)[0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped to white

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (8, 4)).save(rotated, exif=exif)
    assert load_rgb(rotated).shape == (8, 4, 3)


def test_corrupt_image_error_names_the_file(tmp_path: Path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageDecodeError, match=r"bad\.jpg"):
        load_rgb(bad)


def test_digits_are_written_once_with_the_documented_split(tmp_path: Path):
    dm = DigitsDataModule(cache_dir=tmp_path)
    dm.prepare_data()
    sizes = {split: sum(len(f) for f in dm.splits[split].values()) for split in ("train", "val", "test")}
    assert sizes == {"train": 500, "val": 297, "test": 1000}
    assert dm.class_names == [str(i) for i in range(10)]
    assert all(45 <= len(files) <= 55 for files in dm.splits["train"].values())
    first = next(iter(dm.splits["train"]["0"]))
    stamp = first.stat().st_mtime_ns
    DigitsDataModule(cache_dir=tmp_path).prepare_data()
    assert first.stat().st_mtime_ns == stamp
    assert load_rgb(first).shape == (8, 8, 3)


@pytest.mark.slow
def test_first_use_of_the_digits_by_four_processes_at_once_writes_them_once(tmp_path: Path):
    """DDP ranks and jobs sharing a cache prepare the data together; each must find the whole set, none fail."""
    import subprocess
    import sys

    code = "import sys; from tl_lightning.data.digits import DigitsDataModule; "
    code += "DigitsDataModule(cache_dir=sys.argv[1]).prepare_data()"
    jobs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [job.communicate(timeout=300)[1].decode() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0, 0], errors
    assert len(list((tmp_path / "digits-v1").rglob("*.png"))) == 1797
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".digits-v1-")] == []  # no staging left


def test_balanced_sampling_draws_every_class_equally_often(tmp_path: Path):
    from conftest import write_images

    write_images(tmp_path / "train", classes=("common",), per_class=40)
    write_images(tmp_path / "train", classes=("rare",), per_class=4, seed=1)
    write_images(tmp_path / "val", classes=("common", "rare"), per_class=1, seed=2)
    dm = ImageFolderDataModule(tmp_path, balanced_sampling=True, num_workers=0, data_config=DATA_CONFIG)
    loader = dm.train_dataloader()
    labels = []
    for epoch in range(10):  # each epoch its own draws, as Lightning sets the sampler's epoch
        loader.sampler.set_epoch(epoch)
        labels += [y for _, y in loader]
    labels = torch.cat(labels)
    share = labels.float().mean().item()  # fraction of "rare" (label 1) draws
    assert 0.45 < share < 0.55  # without the sampler it would be 4/44 = 0.09
    assert len(dm.train_dataloader().dataset) == 44


@pytest.mark.parametrize("preset", ["none", "light", "medium", "heavy"])
def test_augmentation_presets_build_and_keep_eval_deterministic(preset: str, split_folder: Path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(Path(__file__).parents[2] / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"augment={preset}",
                "data=folder",
                f"data.root={split_folder}",
                "data.num_workers=0",
                "paths.output_dir=unused",
            ],
        )
    dm = instantiate(cfg.data, data_config=DATA_CONFIG)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 16, 16)
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    augment = instantiate(cfg.data.train_transform)(DATA_CONFIG)
    views = {augment(image=image)["image"].sum().item() for _ in range(8)}
    assert (len(views) == 1) == (preset == "none")  # only "none" is deterministic in training
    val = dm.val_dataloader()
    assert torch.equal(next(iter(val))[0], next(iter(val))[0])


def test_heavy_preset_has_randaugment_ops_and_erasing_and_flips_can_be_off():
    heavy = train_transform(DATA_CONFIG, rand_ops=2, erasing=0.25, hflip=0.0)
    names = [type(t).__name__ for t in heavy.transforms]
    assert "SomeOf" in names and "CoarseDropout" in names and "HorizontalFlip" not in names


def test_random_square_crop_keeps_the_whole_shorter_side_at_a_random_place():
    # A 40 x 80 image whose left half is black and right half white: fastai's Resize crop scales the shorter side to
    # the input size and cuts a random square, so the crops see different shares of white but always the full height.
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:, 0] = 255
    image[:, :, 1] = np.linspace(0, 255, 40).astype(np.uint8)[:, None]  # top to bottom: dark to bright
    config = DATA_CONFIG | {"input_size": (3, 32, 32), "mean": (0.0,) * 3, "std": (1.0,) * 3}
    crop = train_transform(config, crop_mode="random_square", hflip=0.0)
    crops = [crop(image=image)["image"] for _ in range(20)]
    assert {tuple(c.shape) for c in crops} == {(3, 32, 32)}
    assert len({round(float(c[0].mean()), 2) for c in crops}) > 1  # where it cuts across is random
    assert all(c[1, 0].max() < 0.05 and c[1, -1].min() > 0.95 for c in crops)  # the full height, top to bottom


def test_lighting_and_warp_add_fastais_batch_augmentations_and_a_bad_crop_mode_is_named():
    names = [type(t).__name__ for t in train_transform(DATA_CONFIG, lighting=0.2, warp=0.2).transforms]
    assert "RandomBrightnessContrast" in names and "Perspective" in names
    plain = [type(t).__name__ for t in train_transform(DATA_CONFIG).transforms]
    assert "RandomBrightnessContrast" not in plain and "Perspective" not in plain
    with pytest.raises(ValueError, match="crop_mode must be one of random_resized, random_square, got 'square'"):
        train_transform(DATA_CONFIG, crop_mode="square")
