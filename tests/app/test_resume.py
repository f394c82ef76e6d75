"""Faults lose no work: a `python train.py` killed with SIGKILL in the frozen phase, at the unfreeze or while the
feature cache is built, or stopped with SIGTERM in the middle of an epoch, resumes from its last.ckpt to the result
of the run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import preloaded
import pytest
import torch
from conftest import FAST, ROOT, write_images

# SIGKILL saves nothing: a kill anywhere in an epoch resumes from the previous epoch's last.ckpt, so one kill per
# epoch kind covers them (a stop that saves mid-epoch is SIGTERM's, tested below).
KILLS = {"in the frozen phase": (1, 0), "at the unfreeze": (2, 0), "in the frozen phase, features cached": (1, 0)}
# The feature cache needs a deterministic training transform; its runs are compared with a straight run of their own.
CACHED = ["callbacks=[default,feature_cache]", "augment=none"]


def train(data: Path, run: Path, *extra: str, multirun: bool = False) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "train.py",
        *(["-m"] if multirun else []),
        "data=folder",
        f"data.root={data}",
        "backbone=test_resnet",
        "model.image_size=32",
        "data.batch_size=8",
        *FAST,
        "trainer.max_epochs=4",
        "callbacks.finetuning.unfreeze_epoch=2",
        f"hydra.run.dir={run}",
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests")}
    return preloaded.run(command, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("resume")
    data = write_images(base / "data", per_class=10)
    done = train(data, base / "straight")
    assert done.returncode == 0, done.stderr[-3000:]
    return data, base / "straight"


@pytest.fixture(scope="module")
def straight_cached(straight, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("resume_cached") / "straight"
    done = train(straight[0], run, *CACHED)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def assert_same_result(reference: Path, run: Path) -> None:
    expected, got = (json.loads((r / "metrics.json").read_text()) for r in (reference, run))
    for key in ("test/acc", "test/loss", "val/acc_best", "calibration/temperature"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    expected_weights, got_weights = final_weights(reference), final_weights(run)
    assert [k for k in expected_weights if not torch.allclose(expected_weights[k], got_weights[k], atol=1e-6)] == []


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights after the last epoch: they depend on every epoch, the resumed ones included."""
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("kill", KILLS)
def test_a_killed_run_resumes_to_the_uninterrupted_result(kill: str, straight, request, tmp_path: Path):
    data, reference = straight
    extra = CACHED if "cached" in kill else []
    if extra:  # the cache is rebuilt at setup, before the checkpoint's states are restored
        reference = request.getfixturevalue("straight_cached")
    epoch, batch = KILLS[kill]
    run = tmp_path / "run"
    # The same command, kill included (it fires once), resumes: a run resumes only under the config it started with.
    once = f"+callbacks.kill.once={tmp_path / 'killed'}"
    kill_args = [
        "+callbacks.kill._target_=kill_at.KillAt",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch={batch}",
        once,
    ]
    killed = train(data, run, *extra, *kill_args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run / "metrics.json").exists()
    if extra:  # killed again while the resumed run rebuilds its feature cache, in the middle of the extraction
        again = train(
            data,
            run,
            *extra,
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "+callbacks.kill._target_=kill_at.KillAt",
            "+callbacks.kill.inside=feature_cache.py",
            "resume=force",  # its kill differs from the first run's: the config check would refuse it
        )
        assert again.returncode == -signal.SIGKILL, again.stderr[-3000:]
        assert "FrozenFeatureCache:" not in again.stderr + again.stdout  # it died before the cache was complete
    forced = ["resume=force"] if extra else []  # the second kill's config is the folder's now
    resumed = train(data, run, *extra, *kill_args, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *forced)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(reference, run)


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [1, 2])  # in the frozen phase; in the first epoch after the unfreeze
def test_a_run_stopped_mid_epoch_resumes_on_the_next_sample_to_the_uninterrupted_result(straight, epoch, tmp_path):
    """A scheduler's stop (SLURM preemption) after the first of an epoch's two steps: last.ckpt is saved mid-epoch,
    work an epoch-end checkpoint would lose, and the same command started again in the same folder (as a requeued
    job is) resumes from it without being told to. It trains the epoch's second batch (same images, same
    augmentations), not a fresh shuffle, and ends where the straight run did."""
    data, reference = straight
    run = tmp_path / "run"
    command = [
        "+callbacks.kill._target_=kill_at.KillAt",
        f"+callbacks.kill.epoch={epoch}",
        "+callbacks.kill.batch=0",
        "+callbacks.kill.signal=SIGTERM",
        f"+callbacks.kill.once={tmp_path / 'stopped'}",
    ]
    stopped = train(data, run, *command)
    assert stopped.returncode == 143, stopped.stderr[-3000:]  # 128 + SIGTERM: a stopped job, not a finished one
    assert not (run / "metrics.json").exists()
    step = 2 * epoch + 1  # Lightning acts on SIGTERM after the step under way: the epoch's first
    assert f"Stopped by SIGTERM after step {step}" in stopped.stderr + stopped.stdout
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == epoch and saved["global_step"] == step
    resumed = train(data, run, *command)  # the same command again, as a requeued job is
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(epoch {epoch}, step {step})" in resumed.stderr + resumed.stdout
    assert_same_result(reference, run)


@pytest.mark.slow
def test_submitit_requeue_signal_saves_after_the_step_then_requeues_and_the_job_finishes(straight, tmp_path: Path):
    """`launcher=slurm`'s path, on submitit's local executor (the same handler, requeueing by restarting the job):
    SIGUSR2 mid-epoch stops training after the step under way, last.ckpt is saved there, and only then does submitit
    requeue; the requeued job resumes from that step in the same folder and finishes."""
    data, _ = straight
    sweep = tmp_path / "sweep"
    done = train(
        data,
        tmp_path / "unused",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
        "+callbacks.kill._target_=kill_at.KillAt",
        "+callbacks.kill.epoch=2",
        "+callbacks.kill.batch=1",
        "+callbacks.kill.signal=SIGUSR2",
        f"+callbacks.kill.once={tmp_path / 'signalled'}",
        multirun=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = (sweep / "0" / "train.log").read_text()
    deferred, requeued = log.index("Received SIGUSR2: stopping after the step"), log.index("Requeued job")
    resumed = log.index("Resuming the interrupted run")
    assert deferred < requeued < resumed
    assert "(epoch 2, step 6)" in log[resumed:]  # the step the signal interrupted, saved before the requeue
    final = torch.load(sweep / "0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 3 and (sweep / "0" / "metrics.json").is_file()


def test_a_rerun_with_another_config_refuses_to_resume_and_names_what_changed(straight, tmp_path: Path):
    """An interrupted run's folder, rerun with another learning rate: its checkpoint's optimizer and schedule belong
    to the old one, so it stops and says so; the epoch budget may change, and resume=force goes on anyway."""
    data, _ = straight
    run = tmp_path / "run"
    kill = [
        "+callbacks.kill._target_=kill_at.KillAt",
        "+callbacks.kill.epoch=1",
        f"+callbacks.kill.once={tmp_path / 'k'}",
    ]
    assert train(data, run, *kill).returncode == -signal.SIGKILL
    changed = train(data, run, *kill, "model.lr=0.05")
    assert changed.returncode == 2
    assert "belongs to a run started with another config (model.lr: 0.001 then, 0.05 now)" in changed.stderr
    assert "resume=force" in changed.stderr and "Traceback" not in changed.stderr
    forced = train(data, run, *kill, "model.lr=0.05", "resume=force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "Resuming the interrupted run" in forced.stderr + forced.stdout


def test_a_second_job_in_a_run_folder_in_use_stops_at_once_naming_the_other(straight, tmp_path: Path):
    from tl_lightning.app.run_folder import hold

    data, _ = straight
    run = tmp_path / "run"
    with hold(run):  # this process is the other job
        second = train(data, run)
    assert second.returncode == 2
    assert f"The run folder {run} is in use by another job (pid={os.getpid()} host=" in second.stderr
    assert not (run / "checkpoints").exists() and not (run / "config.yaml").exists()
    assert train(data, run).returncode == 0  # free again once the first has finished


def test_a_finished_run_is_never_trained_over_unless_told_to(straight, tmp_path: Path):
    """A rerun in a finished run's folder would overwrite its checkpoints and report: it stops before writing
    anything, and resume=overwrite replaces the run."""
    data, _ = straight
    run = tmp_path / "run"
    assert train(data, run).returncode == 0

    def written() -> dict[Path, int]:  # the run's own files (Hydra rewrites .hydra/ and appends to train.log first)
        hydras = {"run.lock", "train.log"}
        files = [p for p in run.rglob("*") if p.is_file() and p.name not in hydras and ".hydra" not in p.parts]
        return {path: path.stat().st_mtime_ns for path in files}

    before = written()
    again = train(data, run)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"{run} holds a finished run (metrics.json of " in again.stderr and "resume=overwrite" in again.stderr
    assert written() == before and run / "checkpoints" / "model.ckpt" in before  # nothing written, nothing lost
    replaced = train(data, run, "resume=overwrite", "seed=7")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert (run / "metrics.json").stat().st_mtime_ns > before[run / "metrics.json"]
    assert "seed: 7" in (run / "config.yaml").read_text()
    typo = train(data, run, "resume=forse")
    assert typo.returncode == 2 and "resume must be one of null, force, overwrite; got 'forse'" in typo.stderr
