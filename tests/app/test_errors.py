"""Bad input through the real command lines: one sentence on stderr, exit status 2, no traceback; or, for bad
files, a finished job that names what it skipped. Each row runs the CLI in a process of its own (a fork of a server
that has imported torch and Lightning once: `preloaded`), two at a time."""

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import preloaded
import pytest
from conftest import FAST, ROOT, fit_with_checkpoints, tiny_model, write_images

SCRIPT = preloaded.CONSOLE_SCRIPT


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("errors")
    data = write_images(base / "data", per_class=6)
    (base / "empty").mkdir()
    undecodable = base / "undecodable"
    for name in ("cat", "dog"):
        (undecodable / name).mkdir(parents=True)
        (undecodable / name / "a.jpg").write_bytes(b"not an image")
    write_images(base / "one_class", classes=("cat",), per_class=6)
    fit_with_checkpoints(tiny_model(backbone="test_resnet"), data, base / "ckpt", max_epochs=1)
    ckpt = base / "ckpt" / "last.ckpt"
    truncated = base / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    other = base / "other_classes"
    write_images(other, classes=("owl", "yak"), per_class=6)
    shutil.copytree(undecodable / "cat", base / "bad_images")
    (base / "notes.ckpt").write_text("not a checkpoint")
    return {
        "base": base,
        "data": data,
        "empty": base / "empty",
        "undecodable": undecodable,
        "ckpt": ckpt,
        "one_class": base / "one_class",
        "truncated": truncated,
        "other": other,
        "bad_images": base / "bad_images",
        "text": base / "notes.ckpt",
    }


def folder(root: Path, out: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "backbone=test_resnet",
        "model.image_size=32",
        f"hydra.run.dir={out}",
        *FAST,
    ]


# (what the user typed, given the fixtures and an output folder) -> the start of the one message
TRAIN_CASES = {
    "negative lr": (lambda f, o: [*folder(f["data"], o), "model.lr=-1"], "model.lr=-1 must be a positive"),
    "lr not a number": (lambda f, o: [*folder(f["data"], o), "model.lr=abc"], "model.lr='abc' is not a number"),
    "lr spread typo": (
        lambda f, o: [*folder(f["data"], o), "model.lr_spread=flatt"],
        "model.lr_spread='flatt' is not one of: auto, geometric, flat.",
    ),
    "no epochs": (lambda f, o: [*folder(f["data"], o), "trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing"),
    "tiny images": (lambda f, o: [*folder(f["data"], o), "model.image_size=4"], "model.image_size=4 is smaller than"),
    "zero batch": (lambda f, o: [*folder(f["data"], o), "data.batch_size=0"], "data.batch_size=0 must be"),
    "negative workers": (lambda f, o: [*folder(f["data"], o), "data.num_workers=-3"], "data.num_workers=-3 must be"),
    "seed not a number": (lambda f, o: [*folder(f["data"], o), "seed=abc"], "seed='abc' must be a whole number"),
    "until stopped": (lambda f, o: [*folder(f["data"], o), "trainer.max_epochs=-1"], "trainer.max_epochs=-1 (train"),
    "trainer refused": (
        lambda f, o: [*folder(f["data"], o), "trainer.precision=64x"],
        "Lightning refused the trainer settings (trainer.accelerator=auto",
    ),
    "task typo": (lambda f, o: [*folder(f["data"], o), "task=lr-find"], "Unknown task 'lr-find'. Did you mean"),
    "missing root": (lambda f, o: folder(f["base"] / "missing", o), "data.root '"),
    "empty root": (lambda f, o: folder(f["empty"], o), "'{empty}' has no class folders"),
    "undecodable root": (lambda f, o: folder(f["undecodable"], o), "Class folders without usable images"),
    "one class": (lambda f, o: folder(f["one_class"], o), "'{one_class}' has one class (cat)"),
    "missing ckpt": (lambda f, o: [*folder(f["data"], o), f"ckpt_path={f['base']}/nope.ckpt"], "ckpt_path '"),
    "truncated ckpt": (lambda f, o: [*folder(f["data"], o), f"ckpt_path={f['truncated']}"], "ckpt_path '"),
    "other classes": (lambda f, o: [*folder(f["other"], o), f"ckpt_path={f['ckpt']}"], "The checkpoint was trained"),
    "checkpoint of another shape": (
        lambda f, o: [*folder(f["data"], o), f"ckpt_path={f['ckpt']}", "trainer.max_epochs=0"],
        "Checkpoint '{ckpt}' holds a model of another shape than this config builds",
    ),
    "pooling the backbone cannot take": (
        lambda f, o: [*folder(f["data"], o), "backbone.name=test_vit", "model.pool=catavgmax"],
        "model.pool=catavgmax does not fit test_vit",
    ),
    "unknown backbone": (lambda f, o: [*folder(f["data"], o), "backbone.name=efficientnet_b99"], "Unknown backbone"),
    "missing weights": (
        lambda f, o: [*folder(f["data"], o), "backbone.pretrained=true", f"backbone.weights_file={f['base']}/w.pth"],
        "Weights file '",
    ),
    "weights not a torch file": (
        lambda f, o: [*folder(f["data"], o), "backbone.pretrained=true", f"backbone.weights_file={f['text']}"],
        "Weights file '{text}' is not a PyTorch file",
    ),
    "tracking server down": (
        lambda f, o: [
            *folder(f["data"], o),
            "logger=mlflow",
            f"logger.mlflow.tracking_uri=http://127.0.0.1:{free_port()}",
        ],
        "The MLflow tracking server at logger.mlflow.tracking_uri=http://127.0.0.1:",
    ),
    "unwritable output": (
        lambda f, o: [*folder(f["data"], o), "paths.output_dir=/proc/tl_out"],
        "paths.output_dir='/proc/tl_out' is not writable",
    ),
    # checked before Hydra starts a job: --cfg job runs none, and a sweep fails before its first job trains
    "printed config": (lambda f, o: [*folder(f["data"], o), "model.lr=-1", "--cfg", "job"], "model.lr=-1 must be"),
    "one bad job of a sweep": (
        lambda f, o: [*folder(f["data"], o), f"hydra.sweep.dir={o}", "model.lr=1e-3,-1", "-m"],
        "In the sweep's job model.lr=-1: model.lr=-1 must be a positive",
    ),
}
TOOL_CASES = {
    "predict truncated": (lambda f, o: ["predict", str(f["truncated"]), str(f["data"])], "Checkpoint '"),
    "predict a text file": (lambda f, o: ["predict", str(f["text"]), str(f["data"])], "Checkpoint '{text}' is not a"),
    "export truncated": (lambda f, o: ["export", str(f["truncated"]), "--out", str(o)], "Checkpoint '"),
    "explain missing": (lambda f, o: ["explain", str(f["base"] / "nope.ckpt"), str(f["data"])], "Checkpoint '"),
    "predict unwritable": (
        lambda f, o: ["predict", str(f["ckpt"]), str(f["data"]), "--out", "/proc/x/p.csv"],
        "--out='/proc/x' is not writable",
    ),
    "predict nothing usable": (
        lambda f, o: ["predict", str(f["ckpt"]), str(f["bad_images"]), "--out", str(o / "p.csv")],
        "None of the 1 files could be read",
    ),
    "audit missing": (lambda f, o: ["audit", str(f["base"] / "missing")], "data.root '"),
    "audit a file": (lambda f, o: ["audit", str(f["truncated"])], "data.root '{truncated}' is a file"),
    "export unwritable": (
        lambda f, o: ["export", str(f["ckpt"]), "--out", "/proc/x/export"],
        "--out='/proc/x/export' is not writable",
    ),
    "serve bad port": (lambda f, o: ["serve", str(f["ckpt"]), "--port", "99999"], "--port=99999: a port is"),
    "serve truncated": (lambda f, o: ["serve", str(f["truncated"]), "--port", "0"], "Checkpoint '"),
    "serve no batch": (lambda f, o: ["serve", str(f["ckpt"]), "--max-batch-size", "0"], "--max-batch-size=0: it must"),
}


def free_port() -> int:
    """A port nothing listens on: bound, read and released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_case(command: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return preloaded.run(command, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def outcomes(fixtures: dict[str, Path]) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    jobs = {}
    for name, (args, expected) in TRAIN_CASES.items():
        out = fixtures["base"] / "runs" / name.replace(" ", "_")
        jobs[name] = ([sys.executable, "train.py", *args(fixtures, out)], expected)
    for name, (args, expected) in TOOL_CASES.items():
        out = fixtures["base"] / "tools" / name.replace(" ", "_")
        out.mkdir(parents=True)
        jobs[name] = ([str(SCRIPT), *args(fixtures, out)], expected)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(run_case, [command for command, _ in jobs.values()]), strict=True))
    return {name: (done[name], jobs[name][1].format(**fixtures)) for name in jobs}


@pytest.mark.parametrize("case", [*TRAIN_CASES, *TOOL_CASES])
def test_bad_input_ends_in_one_sentence(case: str, outcomes):
    done, expected = outcomes[case]
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].removeprefix("Error: ").startswith(expected), errors[0]
