"""Shared fixtures: small generated image folders and tiny models, all on CPU with no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "fox")


ROOT = Path(__file__).resolve().parents[1]
FAST = ["debug=fast", "logger=none", "data.num_workers=0", "data.persistent_workers=false"]


def compose_train(overrides: list[str]):
    """The command line's config with `overrides`, composed in-process."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def folder_overrides(root: Path, out: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "backbone=test_resnet",
        "model.image_size=32",
        f"paths.output_dir={out}",
        *FAST,
    ]


def fit_with_checkpoints(model, folder: Path, ckpt_dir: Path, max_epochs: int, ckpt_path=None, callbacks=()):
    """Fit `model` on `folder` with best.ckpt (val/acc) and last.ckpt written to `ckpt_dir`."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tl_lightning.finetuning.unfreezing import LayerFinetuning

    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc", mode="max")
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, enable_version_counter=False)
    trainer = tiny_trainer(
        max_epochs=max_epochs,
        enable_checkpointing=True,
        callbacks=[LayerFinetuning(milestones={1: "all"}), best, last, *callbacks],
    )
    data = tiny_data(folder, model)
    model.connect_data(data)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


def write_images(folder: Path, classes=CLASSES, per_class: int = 6, size: int = 24, seed: int = 0) -> Path:
    """Class folders of PNGs whose mean colour depends on the class, so a model can learn them."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), dtype=np.float64)
            base[..., index % 3] = 180
            noisy = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / name / f"{name}_{i}.png")
    return folder


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """Class folders directly under the root (split by the DataModule)."""
    return write_images(tmp_path / "flat", per_class=10)


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """train/, val/ and test/ folders of class folders."""
    root = tmp_path / "split"
    write_images(root / "train", per_class=8, seed=1)
    write_images(root / "val", per_class=3, seed=2)
    write_images(root / "test", per_class=3, seed=3)
    return root


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Digits and other caches go to one temp folder per session, never the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TL_LIGHTNING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The real default (digits, shipped Lite0 weights) for a few batches per epoch: one run shared by tests.

    Tests read its folder and checkpoints; none may write into it.
    """
    from tl_lightning.app.train import run

    out = tmp_path_factory.mktemp("digits_run")
    return out, run(compose_train([f"paths.output_dir={out}", "trainer.limit_train_batches=4", *FAST]))


def tiny_model(**kwargs):
    """timm's tiny `test_efficientnet` (BatchNorm in every group) at 32 px; random unless `weights_file` is given."""
    from tl_lightning.models.module import TransferClassifier

    options = {
        "backbone": "test_efficientnet",
        "num_classes": 3,
        "class_names": list(CLASSES),
        "pretrained": "weights_file" in kwargs,
        "image_size": 32,
        "crop_pct": 1.0,
    } | kwargs
    return TransferClassifier(**options)


def tiny_data(root: Path, model=None, **kwargs):
    """A datamodule over `root` with `model`'s preprocessing (a default `tiny_model`'s when not given)."""
    from tl_lightning.data.datamodule import ImageFolderDataModule

    data_config = dict((model or tiny_model()).data_config)
    return ImageFolderDataModule(root, **({"batch_size": 4, "num_workers": 0, "data_config": data_config} | kwargs))


def tiny_trainer(**kwargs):
    import lightning.pytorch as pl

    options = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    } | kwargs
    return pl.Trainer(**options)


def read_phone_export(run: Path, out: Path, phone: str):
    """The digits `run`'s model, test files and labels, and the `phone` record of `out/model.json`, whose other keys
    must be what the app needs (preprocessing, classes, temperature) and whose record describes a batch-1 input and
    the run's test split, as `export --format <phone> --int8 --calibration-images 64` writes it."""
    import json

    import torch

    from tl_lightning.data.splits import read_split
    from tl_lightning.inference.export import metadata
    from tl_lightning.models.module import TransferClassifier

    model = TransferClassifier.load_from_checkpoint(run / "checkpoints" / "model.ckpt", map_location="cpu").eval()
    split = read_split(run / "split.csv")
    files = [file for file, _ in split["test"]]
    truth = torch.tensor([model.class_names.index(name) for _, name in split["test"]])
    info = json.loads((out / "model.json").read_text())
    record = info.pop(phone)
    assert info == json.loads(json.dumps(metadata(model)))
    assert record["input_shape"] == [1, *model.data_config["input_size"]]
    assert record["test_images"] == len(files) and record["calibration_images"] == 64
    return model, files, truth, record
