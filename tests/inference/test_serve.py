"""`python -m tl_lightning serve`: the real LitServe server on a free local port, real images posted over HTTP; its
answers equal the predict CLI's, batched requests are answered one by one, and bad requests get their own 4xx."""

import base64
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from tl_lightning.app.serve import main as serve_main
from tl_lightning.utils import BadValue

SCRIPT = Path(sys.executable).with_name("tl-lightning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if content_type else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def multipart(path: Path, **fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Disposition: form-data; name="
    parts = [f'{head}"{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(
        f'{head}"image"; filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + path.read_bytes()
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@contextmanager
def serving(checkpoint: Path, log: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`tl-lightning serve checkpoint *flags` on a free local port, until healthy; stopped with its workers."""
    port = free_port()
    command = [str(SCRIPT), "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port), *flags]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if call(f"{url}/health") == (200, "ok"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the server did not become healthy:\n{log.read_text()[-3000:]}")
        yield url, process
    finally:
        with suppress(ProcessLookupError):  # a test may have stopped it already
            os.killpg(process.pid, signal.SIGTERM)  # the server and LitServe's worker processes
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(digits_run, tmp_path_factory):
    """The digits checkpoint served with dynamic batching (4 requests, 0.3 s) and a 0.1 MiB request limit."""
    out, _ = digits_run
    log = tmp_path_factory.mktemp("serve") / "server.log"
    flags = ["--max-batch-size", "4", "--batch-timeout", "0.3", "--max-request-mb", "0.1", "--top-k", "3"]
    with serving(out / "checkpoints" / "model.ckpt", log, *flags) as (url, _):
        yield url, out


@pytest.mark.slow
def test_answers_equal_the_predict_cli_with_batching(served, tmp_path: Path):
    url, run = served
    test = Path(os.environ["TL_LIGHTNING_CACHE"]) / "digits-v1" / "test"
    files = [sorted((test / name).iterdir())[0] for name in sorted(os.listdir(test))]  # one per class
    predictions = tmp_path / "p.csv"
    cli = subprocess.run(
        [str(SCRIPT), "predict", str(run / "checkpoints" / "model.ckpt"), *map(str, files), "--out", str(predictions)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    with open(predictions) as f:
        expected = {Path(row["path"]).name: row for row in csv.DictReader(f)}

    def as_json(path: Path) -> tuple[int, dict]:
        return call(
            f"{url}/predict",
            json.dumps({"image": base64.b64encode(path.read_bytes()).decode()}).encode(),
            "application/json",
        )

    with ThreadPoolExecutor(max_workers=len(files)) as pool:  # concurrent: the server batches them
        answers = list(pool.map(as_json, files))
    for path, (status, answer) in zip(files, answers, strict=True):
        assert status == 200, answer
        row = expected[path.name]
        assert answer["class"] == row["class"]
        assert len(answer["top_k"]) == 3
        probabilities = [item["probability"] for item in answer["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        for item in answer["top_k"]:  # the calibrated probabilities, to the CSV's 6 decimals
            assert item["probability"] == pytest.approx(float(row[f"p_{item['class']}"]), abs=2e-6)

    status, answer = call(f"{url}/predict", *multipart(files[0], top_k="1"))  # a file upload, top_k per request
    assert status == 200 and [item["class"] for item in answer["top_k"]] == [expected[files[0].name]["class"]]
    status, info = call(f"{url}/info")
    saved = torch.load(run / "checkpoints" / "model.ckpt", map_location="cpu", weights_only=True)
    assert info["model"]["classes"] == [str(i) for i in range(10)]
    assert info["model"]["temperature"] == pytest.approx(float(saved["state_dict"]["temperature"]))  # the calibrated T


def test_bad_requests_get_their_own_4xx_and_spare_their_batch(served, tmp_path: Path):
    url, _ = served
    good = next((Path(os.environ["TL_LIGHTNING_CACHE"]) / "digits-v1" / "test" / "3").iterdir())
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(200_000))
    requests = {
        "good": multipart(good),
        "not an image": multipart(text),
        "good again": multipart(good),
        "bad base64": (json.dumps({"image": "@@@"}).encode(), "application/json"),
    }
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:  # sent together: one batch of the server's
        answers = dict(zip(requests, pool.map(lambda r: call(f"{url}/predict", *r), requests.values()), strict=True))
    assert answers["good"][0] == answers["good again"][0] == 200
    assert answers["not an image"][0] == 415 and "'notes.png' is not an image" in answers["not an image"][1]["error"]
    assert answers["bad base64"][0] == 400 and '"image" is not base64' in answers["bad base64"][1]["error"]

    status, answer = call(f"{url}/predict", *multipart(big))
    assert status == 413 and "larger than 0.1 MiB" in answer["error"]
    status, answer = call(f"{url}/predict", b"hello", "text/plain")
    assert status == 415 and "Content type 'text/plain'" in answer["error"]
    status, answer = call(f"{url}/predict", b"{oops", "application/json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = call(f"{url}/predict", json.dumps({"picture": "x"}).encode(), "application/json")
    assert status == 400 and 'no "image"' in answer["error"]
    assert call(f"{url}/predict", *multipart(good))[0] == 200  # and the server still serves


def test_a_port_in_use_is_named_before_the_model_loads(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(BadValue, match=f"Cannot listen on 127.0.0.1:{port}"):
            serve_main([str(tmp_path / "never_loaded.ckpt"), "--host", "127.0.0.1", "--port", str(port)])
