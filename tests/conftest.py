"""Shared fixtures: small generated image folders and tiny models, all on CPU with no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "fox")


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
    from test_train import FAST, compose_train

    from tl_lightning.training import run

    out = tmp_path_factory.mktemp("digits_run")
    return out, run(compose_train([f"paths.output_dir={out}", "trainer.limit_train_batches=4", *FAST]))


def tiny_model(**kwargs):
    """timm's tiny `test_efficientnet` (BatchNorm in every group) at 32 px; random unless `weights_file` is given."""
    from tl_lightning.module import TransferClassifier

    options = {"backbone": "test_efficientnet", "num_classes": 3, "class_names": list(CLASSES),
               "pretrained": "weights_file" in kwargs,
               "image_size": 32, "crop_pct": 1.0} | kwargs  # fmt: skip
    return TransferClassifier(**options)


def tiny_data(root: Path, **kwargs):
    from tl_lightning.datamodule import ImageFolderDataModule

    return ImageFolderDataModule(root, **({"batch_size": 4, "num_workers": 0} | kwargs))


def tiny_trainer(**kwargs):
    import lightning.pytorch as pl

    options = {"accelerator": "cpu", "max_epochs": 2, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False} | kwargs  # fmt: skip
    return pl.Trainer(**options)
