"""Hardware by default: `trainer: auto`, precision and loader workers resolved at run start, explicit values win."""

import json
import sys
from pathlib import Path

import preloaded
import pytest
import torch
from conftest import ROOT, compose_train, folder_overrides, tiny_data, tiny_trainer

from tl_lightning.app import hardware
from tl_lightning.app.train import run
from tl_lightning.data.distributed import MAX_AUTO_WORKERS, auto_num_workers


def test_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch):
    assert hardware.auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # emulation counts there
    for capability, precision in (
        ((7, 5), "16-mixed"),
        ((7, 0), "16-mixed"),
        ((8, 0), "bf16-mixed"),
        ((9, 0), "bf16-mixed"),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, cap=capability: cap)
        assert hardware.auto_precision("auto") == precision, capability  # T4, V100, A100, H100
    assert hardware.auto_precision("gpu") == "bf16-mixed"
    assert hardware.auto_precision("cpu") == "32-true"  # trainer=cpu forces the CPU whatever the machine has


def test_auto_is_the_default_and_an_explicit_value_wins():
    cfg = compose_train(["paths.output_dir=unused"])
    assert cfg.trainer.accelerator == "auto" and cfg.trainer.devices == 1 and cfg.trainer.precision == "auto"
    hardware.resolve(cfg)
    assert cfg.trainer.precision == hardware.auto_precision("auto")
    explicit = compose_train(["paths.output_dir=unused", "trainer.precision=bf16-mixed"])
    hardware.resolve(explicit)
    assert explicit.trainer.precision == "bf16-mixed"
    assert compose_train(["paths.output_dir=unused", "trainer=cpu"]).trainer.accelerator == "cpu"


def test_loader_workers_share_the_usable_cpus_between_devices(split_folder: Path):
    assert auto_num_workers(devices=1, cpus=64) == MAX_AUTO_WORKERS
    assert auto_num_workers(devices=8, cpus=64) == 7
    assert auto_num_workers(devices=2, cpus=2) == 0
    auto = tiny_data(split_folder, num_workers=None, pin_memory=None)
    assert auto.loader_settings(devices=1, on_cuda=True) == (auto_num_workers(1), True)
    assert auto.loader_settings(devices=1, on_cuda=False)[1] is False
    fixed = tiny_data(split_folder, num_workers=3, pin_memory=False)
    assert fixed.loader_settings(devices=4, on_cuda=True) == (3, False)
    auto.trainer = tiny_trainer()  # as fit attaches it: a CPU trainer
    auto.setup("fit")
    assert auto.train_dataloader().num_workers == auto_num_workers(1) and not auto.train_dataloader().pin_memory


def test_the_run_records_its_hardware(flat_folder: Path, tmp_path: Path):
    metrics = run(compose_train(folder_overrides(flat_folder, tmp_path)))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["hardware/accelerator"] == metrics["hardware/accelerator"] == "cpu"  # no GPU on this machine
    assert saved["hardware/precision"] == "32-true" and saved["hardware/devices"] == 1
    assert (tmp_path / "config.yaml").read_text().count("precision: 32-true") == 1  # resolved before it is saved


def test_cfg_job_shows_the_auto_hardware_for_the_plants_recipe():
    command = [sys.executable, "train.py", "backbone=efficientnet_b4", "data=plants", "--cfg", "job"]
    done = preloaded.run(command, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accelerator: auto" in done.stdout and "precision: auto" in done.stdout
    assert "num_workers: null" in done.stdout and "pin_memory: null" in done.stdout  # chosen at run start
