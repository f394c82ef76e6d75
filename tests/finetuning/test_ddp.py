"""Multi-device runs on CPU: the global batch split per device, evaluation without repeats, timm-safe SyncBN,
and a real 2-process DDP `python train.py` that writes one run folder and counts every sample once."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from conftest import tiny_data

from tl_lightning.data.distributed import eval_sampler, per_device_batch_size
from tl_lightning.finetuning.sync_batchnorm import TimmSyncBatchNorm
from tl_lightning.inference.predict import predict_files
from tl_lightning.models.module import TransferClassifier

ROOT = Path(__file__).resolve().parents[2]


def test_global_batch_is_split_per_device_or_refused(split_folder: Path):
    assert per_device_batch_size(32, 4) == 8
    with pytest.raises(ValueError, match=r"data\.batch_size=30 .* 4 devices; use e\.g\. data\.batch_size=28 or 32"):
        per_device_batch_size(30, 4)
    dm = tiny_data(
        split_folder,
        batch_size=6,
        data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0},
    )
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, lightning_module=None, strategy=cpu, current_epoch=0)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 3 and dm.train_dataloader().sampler.num_replicas == 2
    assert len(dm.val_dataloader().sampler) == 4  # 9 validation images: rank 1 of 2 gets 4, rank 0 gets 5
    whole = dm.eval_dataloader("val")  # calibration and reports see every image on every rank
    assert len(whole.dataset) == 9 and isinstance(whole.sampler, torch.utils.data.SequentialSampler)


def test_eval_sampler_covers_each_sample_exactly_once():
    dataset = list(range(9))
    shares = [list(eval_sampler(dataset, 2, rank)) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == dataset
    assert eval_sampler(dataset, 1, 0) is None
    padded = [list(torch.utils.data.DistributedSampler(dataset, 2, rank, shuffle=False)) for rank in (0, 1)]
    assert len(padded[0] + padded[1]) == 10  # what PyTorch's sampler would have counted


def test_sync_batchnorm_keeps_timm_activations():
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        ours = TimmSyncBatchNorm().apply(timm.create_model("tf_efficientnet_lite0", num_classes=0)).eval()
        ours.load_state_dict(model.state_dict())
        torch_default = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()  # Lightning's converter
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in ours.modules())
        torch.testing.assert_close(ours(x), expected)
        assert (torch_default(x) - expected).abs().max() > 1.0  # the activation inside BatchNormAct2d is gone


@pytest.mark.slow
def test_ddp_spawn_on_cpu_counts_every_sample_once(split_folder: Path, tmp_path: Path):
    """Spawned processes share the module's CPU memory; metric states must not be summed by both at once."""
    script = Path(__file__).parents[1] / "ddp_spawn_count.py"
    env = os.environ | {"PYTHONPATH": str(script.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(split_folder), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "counted.json").read_text()) == {"val": 9.0, "test": 9.0}


@pytest.mark.slow
def test_two_process_ddp_run_writes_one_folder_and_counts_every_sample_once(split_folder: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    command = [
        sys.executable,
        "train.py",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data=folder",
        f"data.root={split_folder}",
        "backbone=test_resnet",
        "model.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.max_epochs=2",
        "logger=csv",
        f"hydra.run.dir={runs}/ddp",
        "trainer.enable_progress_bar=false",
    ]
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # one folder for both ranks
    run = runs / "ddp"
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in it, and wrote nothing else of its own
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/samples"] == 9  # 3 per class; a padding sampler would have scored 10
    with open(run / "csv" / "version_0" / "metrics.csv") as f:
        val_counts = [float(r["val/samples"]) for r in csv.DictReader(f) if r.get("val/samples")]
    assert val_counts == [9.0, 9.0]  # each of the 2 epochs
    assert (run / "report.md").is_file() and (run / "checkpoints" / "model.ckpt").is_file()
    # The test pass ran as two shards through the predict loop; gathered back, each file keeps its own answer.
    with open(run / "report" / "top_losses.csv") as f:
        reported = {row["path"]: (row["predicted"], float(row["loss"])) for row in csv.DictReader(f)}
    best = TransferClassifier.load_from_checkpoint(run / "checkpoints" / "model.ckpt", map_location="cpu")
    alone = predict_files(best, sorted(Path(path) for path in reported))
    names = best.class_names
    expected = {
        str(path): (names[int(p.argmax())], -float(p[names.index(path.parent.name)].log()))
        for path, p in zip(alone.files, alone.probabilities, strict=True)
    }
    assert len(reported) == 9
    assert {k: v[0] for k, v in reported.items()} == {k: v[0] for k, v in expected.items()}
    assert {k: v[1] for k, v in reported.items()} == pytest.approx({k: v[1] for k, v in expected.items()}, rel=1e-3)
