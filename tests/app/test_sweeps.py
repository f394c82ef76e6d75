"""Sweeps: an Optuna search scored on validation, the multi-seed preset's mean +- std, and the SLURM launcher."""

import json
import os
import statistics
import sys
from pathlib import Path

import preloaded
import pytest
import yaml
from conftest import FAST, ROOT, folder_overrides
from hydra import compose, initialize_config_dir

from tl_lightning.app.sweeps import summarise


def sweep(overrides: list[str], sweep_dir: Path) -> None:
    command = [sys.executable, "train.py", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    env = os.environ | {"HYDRA_FULL_ERROR": "1"}
    done = preloaded.run(command, cwd=ROOT, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def jobs(sweep_dir: Path) -> list[dict]:
    return [json.loads((sweep_dir / str(i) / "metrics.json").read_text()) for i in range(2)]


@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_reports_the_best_validation_score(flat_folder: Path, tmp_path: Path):
    data = [o for o in folder_overrides(flat_folder, tmp_path) if not o.startswith("paths.")]
    sweep(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *data], tmp_path / "optuna")
    results = yaml.safe_load((tmp_path / "optuna" / "optimization_results.yaml").read_text())
    scores = [m["val/acc_best"] for m in jobs(tmp_path / "optuna")]
    assert results["best_value"] == pytest.approx(max(scores))  # optimised on validation, not on test
    assert set(results["best_params"]) == {
        "model.lr",
        "model.lr_mult",
        "callbacks.finetuning.unfreeze_epoch",
        "augment",
    }
    assert 1e-4 <= results["best_params"]["model.lr"] <= 1e-2


@pytest.mark.slow
def test_seed_preset_reports_mean_and_std_over_seeds(flat_folder: Path, tmp_path: Path):
    data = [o for o in folder_overrides(flat_folder, tmp_path) if not o.startswith("paths.")]
    sweep(["hparams_search=seeds", "seed=1,2", *data], tmp_path / "seeds")
    summary = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert summary["seeds"] == [1, 2]
    losses = [m["test/loss"] for m in jobs(tmp_path / "seeds")]
    assert losses[0] != losses[1]  # the seeds really differ
    assert summary["metrics"]["test/loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    assert summary["metrics"]["test/loss"]["std"] == pytest.approx(statistics.stdev(losses))
    assert "| test/acc |" in (tmp_path / "seeds" / "seeds.md").read_text()


def test_summarise_keeps_numeric_metrics_shared_by_every_job():
    summary = summarise([{"a": 1.0, "b": 2, "w": "timm", "only": 3.0}, {"a": 3.0, "b": 2, "w": "timm"}])
    assert set(summary) == {"a", "b"}
    assert summary["a"] == {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2, "values": [1.0, 3.0]}


def test_slurm_launcher_composes(tmp_path: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "trainer=ddp", *FAST], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 1
