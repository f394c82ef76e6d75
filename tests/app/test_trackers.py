"""Trackers, against the real thing: a run with `logger=mlflow` sends a real MLflow tracking server (started here, on
a free local port, SQLite backend) its config, per-epoch metrics, report figures, files and best checkpoint, read back
with `MlflowClient`; `logger=wandb` without a login logs offline, and its run folder holds the same."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import preloaded
import pytest
from conftest import FAST, ROOT, write_images

EPOCHS = 3


def train(data: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "train.py",
        "data=folder",
        f"data.root={data}",
        "backbone=test_resnet",
        "model.image_size=32",
        "data.batch_size=8",
        *FAST,
        f"trainer.max_epochs={EPOCHS}",
        f"hydra.run.dir={out}",
        *extra,
    ]
    return preloaded.run(command, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("trackers") / "data", per_class=8)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = base / "server.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{base}/mlflow.db",
                "--artifacts-destination",
                str(base / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_server_holds_the_config_metrics_files_and_checkpoint(data: Path, mlflow_server: str, tmp_path: Path):
    from mlflow import MlflowClient

    out = tmp_path / "run"
    done = train(data, out, "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("tl_lightning").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model/lr"] == "0.001" and params["data/root"] == str(data)
    assert params["model/image_size"] == "32"  # the config as it ran, not `auto`
    assert run.data.tags["class_names"] == "cat, dog, fox"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == EPOCHS
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "config.yaml", "report"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/model.ckpt"]
    report = client.download_artifacts(run.info.run_id, "report.md", str(tmp_path))
    assert Path(report).read_bytes() == (out / "report.md").read_bytes()


def test_wandb_without_a_login_logs_offline_and_says_how_to_sync(data: Path, tmp_path: Path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path)}  # no login
    done = train(data, out, "logger=wandb", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wandb sync {out}/wandb/offline-run-*" in done.stdout + done.stderr
    (folder,) = (out / "wandb").glob("offline-run-*")
    files = folder / "files" / out.name
    for name in ("report.md", "metrics.json", "config.yaml", "checkpoints/model.ckpt"):
        assert (files / name).read_bytes() == (out / name).read_bytes(), name
    (record,) = folder.glob("*.wandb")  # W&B's own run log: history, config and summary records
    logged = record.read_bytes()
    for key in (b"val/acc", b"test/acc", b"lr_mult", b"class_names"):
        assert key in logged, key


def test_logger_many_is_csv_mlflow_and_wandb_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from conftest import compose_train
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger

    monkeypatch.setenv("HOME", str(tmp_path))  # no W&B login: offline
    cfg = compose_train(["logger=many", f"paths.output_dir={tmp_path}"])
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert sorted(type(logger).__name__ for logger in loggers) == ["CSVLogger", "MLFlowLogger", "WandbLogger"]
    mlflow = next(logger for logger in loggers if isinstance(logger, MLFlowLogger))
    assert mlflow._tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"  # in the run folder
    assert isinstance(loggers[0], CSVLogger) and any(isinstance(logger, WandbLogger) for logger in loggers)
