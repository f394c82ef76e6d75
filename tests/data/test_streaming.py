"""LitData streaming: `python -m tl_lightning optimize` writes real chunks of an audited folder, and
`data=streaming` trains from them: the same images and split as the folder, disjoint shares for two gloo ranks,
and a run stopped mid-epoch resumes to the uninterrupted run's result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import preloaded
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import FAST, ROOT, tiny_data, tiny_model, write_images

from tl_lightning.data.streaming import StreamingDataModule
from tl_lightning.data.transforms import eval_transform


def optimize(root: Path, out: Path) -> subprocess.CompletedProcess:
    return preloaded.run([sys.executable, "-m", "tl_lightning", "optimize", str(root), str(out)], cwd=ROOT)


@pytest.fixture(scope="module")
def chunks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("streaming")
    root = write_images(base / "data", per_class=12)
    (root / "cat" / "broken.png").write_bytes(b"not an image")  # the audit leaves it out
    done = optimize(root, base / "chunks")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Wrote train 24, val 6, test 6 samples" in done.stdout and "broken.png" in done.stdout
    return root, base / "chunks"


def modules(root: Path, out: Path, **kwargs) -> tuple:
    """The folder's datamodule and the stream's, both with the deterministic eval transform for training too."""
    config = dict(tiny_model().data_config)
    folder = tiny_data(root, train_transform=eval_transform)
    stream = StreamingDataModule(
        str(out), batch_size=4, num_workers=0, train_transform=eval_transform, data_config=config, **kwargs
    )
    return folder, stream


def test_the_stream_holds_the_audited_folder_with_its_split_and_order(chunks):
    folder, stream = modules(*chunks)
    assert stream.class_names == folder.class_names
    for split in ("train", "val", "test"):
        names = [str(path.relative_to(chunks[0])) for path, _ in folder.samples(split)]
        assert [(str(p), y) for p, y in stream.samples(split)] == list(
            zip(names, [y for _, y in folder.samples(split)], strict=True)
        )
        assert "cat/broken.png" not in names
    assert stream.short_sides() == folder.short_sides()  # the recipe sizes the input the same way
    # evaluation reads the chunks in order: index i is samples[i], so the report names the right files
    for split in ("val", "test"):
        a = torch.cat([x for x, _ in folder.eval_dataloader(split)])
        b = torch.cat([x for x, _ in stream.eval_dataloader(split)])
        assert torch.equal(a, b)


def test_one_training_epoch_sees_every_training_image_once(chunks):
    folder, stream = modules(*chunks)
    expected = sorted((float(x.sum()), y) for x, y in folder.dataset("train", train=False))
    batches = list(stream.train_dataloader())
    seen = sorted((float(x.sum()), int(y)) for xs, ys in batches for x, y in zip(xs, ys, strict=True))
    assert [y for _, y in seen] == [y for _, y in expected]  # every image once: 24 images, batches of 4
    assert [s for s, _ in seen] == pytest.approx([s for s, _ in expected], abs=1e-2)


def _rank_reads(rank: int, out: str, port: int, results) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    stream = StreamingDataModule(out, batch_size=4, num_workers=0, data_config=dict(tiny_model().data_config))
    results[rank] = [item["name"] for item in stream._stream("train", shuffle=True, seed=0)]
    dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shares_of_the_training_split(chunks):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_reads, args=(str(chunks[1]), port, results), nprocs=2, join=True)
    first, second = results[0], results[1]
    assert first and second and not set(first) & set(second)
    names = {sample for sample, _ in json.loads((chunks[1] / "tl_lightning.json").read_text())["splits"]["train"]}
    assert set(first) | set(second) <= names and len(set(first) | set(second)) >= len(names) - 1  # an odd one dropped


def train(chunks: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "train.py",
        "data=streaming",
        f"data.input_dir={chunks}",
        "backbone=test_resnet",
        "model.image_size=32",
        "data.batch_size=8",
        *FAST,
        "trainer.max_epochs=3",
        "callbacks.finetuning.unfreeze_epoch=1",
        "trainer.limit_train_batches=null",
        f"hydra.run.dir={run}",
        *extra,
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests")}
    return preloaded.run(command, cwd=ROOT, env=env)


@pytest.mark.slow
def test_a_streaming_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(chunks, tmp_path: Path):
    straight = train(chunks[1], tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert (tmp_path / "straight" / "report" / "top_losses.png").is_file()  # test images read back from the chunks
    run = tmp_path / "run"
    kill = [
        "+callbacks.kill._target_=kill_at.KillAt",
        "+callbacks.kill.epoch=1",
        "+callbacks.kill.batch=0",
        "+callbacks.kill.signal=SIGTERM",
        f"+callbacks.kill.once={tmp_path / 'stopped'}",
    ]
    stopped = train(chunks[1], run, *kill)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4  # 3 steps an epoch: inside epoch 1
    resumed = train(chunks[1], run, *kill)  # the same command again: a run resumes only under its own config
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = (json.loads((r / "metrics.json").read_text()) for r in (tmp_path / "straight", run))
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
