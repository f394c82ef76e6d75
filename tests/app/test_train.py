"""The training entry, in-process through Hydra's compose API and as `python train.py` subprocesses."""

import csv
import json
import os
import sys
from pathlib import Path

import preloaded
import pytest
import torch
from conftest import FAST, ROOT, compose_train, folder_overrides
from omegaconf import OmegaConf

from tl_lightning.app.train import run
from tl_lightning.inference.predict import predict_files
from tl_lightning.models.module import TransferClassifier


def test_run_writes_the_run_folder_and_tests_the_best_checkpoint(flat_folder: Path, tmp_path: Path):
    out = tmp_path / "run"
    metrics = run(compose_train(folder_overrides(flat_folder, out)))
    written = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert written == ["best_epoch.ckpt", "last.ckpt", "model.ckpt", "probe.ckpt"]
    for name in ("config.yaml", "split.csv", "audit.json", "metrics.json", "report.md", "report/top_losses.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert saved["checkpoint"] == str(out / "checkpoints" / "model.ckpt")
    assert set(saved) >= {"test/acc_macro", "test/f1_macro", "test/precision_macro", "test/recall_macro"}
    # test/acc is the best checkpoint's over the whole test split, as predicting its files one by one gives it
    best = TransferClassifier.load_from_checkpoint(out / "checkpoints" / "model.ckpt")
    with open(out / "split.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["split"] == "test"]
    test_files = [Path(row["path"]) for row in rows]
    answers = predict_files(best, test_files).probabilities.argmax(1).tolist()
    truth = [best.class_names.index(row["class"]) for row in rows]
    assert saved["test/samples"] == len(test_files) > 0
    assert saved["test/acc"] == pytest.approx(sum(a == t for a, t in zip(answers, truth, strict=True)) / len(truth))
    assert OmegaConf.load(out / "config.yaml").model.backbone == "test_resnet"


def test_default_config_is_digits_on_the_shipped_lite0_weights(digits_run: tuple[Path, dict]):
    cfg = compose_train([])
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.weights_file == "package:efficientnet_lite0"
    assert cfg.model.image_size == 64
    out, metrics = digits_run  # a few batches of the real default: digits written, weights loaded, test run
    assert metrics["weights"] == "package:efficientnet_lite0"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(ckpt["tl_lightning"]["weights"]["sha256"]) == 64
    # On 8 px digits an SVM on the pixels beats a probe of the ImageNet features: the recipe moves the backbone boldly.
    written = (out / "config.yaml").read_text()
    assert OmegaConf.create(written).model.lr_mult == 4.0
    assert OmegaConf.create(written).model.lr_spread == "geometric"  # the top blocks, where digits differ, most
    assert "# recipe: model.lr_mult=4.0 because a linear probe of the frozen features scores" in written
    assert ckpt["tl_lightning"]["data_config"]["mean"] == (0.5, 0.5, 0.5)


def test_efficientnet_b4_on_plants_composes_and_trains_from_scratch(flat_folder: Path, tmp_path: Path):
    cfg = compose_train(["backbone=efficientnet_b4", "data=plants"])
    assert cfg.model.backbone == "efficientnet_b4" and cfg.model.pretrained is True
    assert cfg.data._target_ == "tl_lightning.data.datamodule.ImageFolderDataModule"
    overrides = [
        "backbone=efficientnet_b4",
        "data=plants",
        "backbone.pretrained=false",
        f"data.root={flat_folder}",
        "model.image_size=32",
        f"paths.output_dir={tmp_path}",
        *FAST,
    ]
    metrics = run(compose_train(overrides))
    assert metrics["weights"] == "random-init" and "test/acc" in metrics


def test_missing_data_root_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(compose_train(folder_overrides(tmp_path / "nowhere", tmp_path / "out")))


def test_unknown_backbone_is_named(flat_folder: Path, tmp_path: Path):
    overrides = [*folder_overrides(flat_folder, tmp_path), "backbone.name=efficientnet_b99"]
    with pytest.raises(Exception, match=r"Unknown backbone 'efficientnet_b99'.*Close matches"):
        run(compose_train(overrides))


@pytest.mark.slow
def test_multirun_sweeps_two_learning_rates(flat_folder: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in folder_overrides(flat_folder, tmp_path) if not o.startswith("paths.")]
    command = [sys.executable, "train.py", "-m", "model.lr=1e-3,3e-4", f"hydra.sweep.dir={sweep}", *overrides]
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    done = preloaded.run(command, cwd=ROOT, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs = [OmegaConf.load(job / "config.yaml").model.lr for job in jobs]
    assert lrs == [1e-3, 3e-4]
    assert all("test/acc" in json.loads((job / "metrics.json").read_text()) for job in jobs)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_passes_a_smoke_run(experiment: str, split_folder: Path, tmp_path: Path):
    # On a small folder at 32 px: what runs is the experiment's recipe, not its data or resolution.
    cfg = compose_train([f"experiment={experiment}", *folder_overrides(split_folder, tmp_path)])
    selects = cfg.callbacks.get("model_checkpoint") is not None
    metrics = run(cfg)
    # An experiment without checkpoint selection (fastai's: the last epoch is the model) keeps the last epoch.
    assert Path(metrics["checkpoint"]).is_file() and Path(metrics["checkpoint"]).name == "model.ckpt"
    kept = {"best_epoch.ckpt", "probe.ckpt"} if selects else {"last.ckpt"}
    assert Path(metrics["kept_from"]).name in kept
    assert metrics["test/samples"] > 0
