"""A full disk, for real: a small tmpfs mounted for the test (this needs root; elsewhere the tests skip and say why).
The write that runs out of space ends in one sentence naming the file and the space there, the file it was
replacing still loads, and no partial file is left under a final name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, write_images

from tl_lightning.models.checkpoint import AtomicCheckpointIO
from tl_lightning.utils import DiskFull, NotWritable, atomic_path, write_text


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): the disk-full tests need one")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_whole(small_disk: Path):
    path = small_disk / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(DiskFull, match=r"No space left to write .*last\.ckpt: .* MiB are free there; the previous"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(256 * 1024)}, path)  # 1 MiB of floats
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left either


def test_any_file_written_atomically_says_the_same_and_keeps_the_old_one(small_disk: Path):
    path = small_disk / "metrics.json"
    path.write_text("{}")
    fill(small_disk, leave=4096)
    with pytest.raises(DiskFull, match=r"metrics\.json"), atomic_path(path) as tmp:
        tmp.write_bytes(b"x" * 512 * 1024)
    assert path.read_text() == "{}" and sorted(p.name for p in small_disk.iterdir()) == ["filler", "metrics.json"]


@pytest.mark.slow
def test_a_run_on_a_full_disk_stops_with_one_sentence_and_a_nonzero_exit(small_disk: Path, tmp_path: Path):
    data = write_images(tmp_path / "data", per_class=6)
    run = small_disk / "run"
    fill(small_disk, leave=200 * 1024)  # room for the config and reports, not for a checkpoint of this model
    command = [sys.executable, "train.py", "data=folder", f"data.root={data}", "data.batch_size=4", *FAST]
    done = subprocess.run(
        [*command, f"hydra.run.dir={run}", "trainer.enable_progress_bar=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Error: No space left to write" in done.stderr and "Traceback" not in done.stderr
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))
    for checkpoint in run.rglob("*.ckpt"):  # whatever was written under a final name is whole
        torch.load(checkpoint, map_location="cpu", weights_only=True)


def test_read_only_storage_ends_in_one_sentence_before_and_during_a_run(small_disk: Path, tmp_path: Path):
    """A run folder on a read-only mount is refused before Hydra would make it (its traceback); storage that turns
    read-only mid-run (a remount after an error) refuses the next write with one sentence, the old file kept."""
    kept = small_disk / "checkpoints" / "last.ckpt"
    write_text(kept, "previous")
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only ({remount.stderr.strip()})")
    refused = rf"Cannot write {kept}: its file system is read-only; the previous last"
    with pytest.raises(NotWritable, match=refused), atomic_path(kept) as tmp:
        tmp.write_text("new")
    assert kept.read_text() == "previous"

    data = write_images(tmp_path / "data", per_class=6)
    overrides = ["data=folder", f"data.root={data}", *FAST]
    for where in (f"hydra.run.dir={small_disk / 'run'}", f"hydra.sweep.dir={small_disk / 'sweep'}"):
        multirun = ["-m", "seed=1,2"] if "sweep" in where else []
        command = [sys.executable, "train.py", *multirun[:1], *overrides, *multirun[1:], where]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
        key = where.split("=", 1)[0]
        assert (
            f"Error: {key}='{small_disk}/" in done.stderr and "is not writable (Read-only file system)" in done.stderr
        )
