"""`tl-lightning`: one console script for every job, installed by the README's install command."""

import json
import subprocess
from pathlib import Path

import preloaded
import pytest
from conftest import FAST

from tl_lightning.app.cli import COMMANDS, main

SCRIPT = preloaded.CONSOLE_SCRIPT


def test_help_lists_every_job_with_one_line():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name, line in COMMANDS.items():
        assert f"  {name}" in done.stdout and line in done.stdout


def test_unknown_command_is_named():
    with pytest.raises(SystemExit, match="Unknown command 'trian'"):
        main(["trian"])


@pytest.mark.slow
def test_train_runs_the_default_from_any_folder(tmp_path: Path):
    """The default config (digits, shipped Lite0), a few batches, started outside the repository."""
    run_dir = tmp_path / "run"
    command = [SCRIPT, "train", *FAST, f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false"]
    done = preloaded.run(command, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["weights"] == "package:efficientnet_lite0" and metrics["test/samples"] > 0
    assert Path(metrics["checkpoint"]).is_relative_to(run_dir)


def test_subcommands_take_their_own_arguments(split_folder: Path):
    done = preloaded.run([str(SCRIPT), "audit", str(split_folder)], cwd=split_folder)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usable images" in done.stdout
