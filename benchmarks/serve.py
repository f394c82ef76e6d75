"""Requests/s and latency of `python -m tl_lightning serve`, at batch 1 and with dynamic batching, against the same
model called in-process (the floor the HTTP server adds to).

Each setting starts the real server on a free local port, sends `--warmup` requests, then `--requests` multipart
uploads of real test images from `--concurrency` client threads; latency is per request as the client sees it.
The clients run on the same machine as the server, so on a small CPU they take cores from it.

Then a soak: `--soak` requests (5,000) from 8 clients against one server with dynamic batching, as a busy app
would send them: every status counted (any 5xx is a failure), latency per window of 1,000 requests (flat means no
slow-down over time), and the resident memory of the server's process tree after a warm-up and at the end.

    python benchmarks/serve.py [--checkpoint CKPT] [--requests 200] [--soak 5000] [--device cpu|cuda]

Without `--checkpoint`, the newest `outputs/train/runs/*/checkpoints/best.ckpt` (run `python train.py` first).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch
from _results import machine, save_json

from tl_lightning.data.images import load_image
from tl_lightning.data.transforms import eval_transform
from tl_lightning.models.module import TransferClassifier

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # name, max batch size, batch timeout (s), client threads
    ("batch 1, one client", 1, 0.0, 1),
    ("batch 1, 8 clients", 1, 0.0, 8),
    ("batch up to 8 (10 ms), 8 clients", 8, 0.01, 8),
]
SOAK = SETTINGS[-1]
WINDOW = 1000  # requests per latency window of the soak


def newest_checkpoint() -> Path:
    found = sorted(ROOT.glob("outputs/train/runs/*/checkpoints/best.ckpt"))
    if not found:
        raise SystemExit("No checkpoint under outputs/train/runs: run `python train.py` first, or pass --checkpoint.")
    return found[-1]


def test_images(checkpoint: Path, count: int = 50) -> list[Path]:
    """Test images of the checkpoint's run, from its split.csv."""
    with open(checkpoint.parent.parent / "split.csv") as f:
        return [Path(row["path"]) for row in csv.DictReader(f) if row["split"] == "test"][:count]


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n\r\n'
    body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, body: tuple[bytes, str]) -> tuple[int, float]:
    """The status and the seconds one upload took, as the client sees them."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=body[0], headers={"Content-Type": body[1]})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.perf_counter() - start


@contextlib.contextmanager
def server(checkpoint: Path, batch: int, timeout: float, device: str, *flags: str):
    """A real server on a free local port, healthy; yields its URL and process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "tl_lightning",
        "serve",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    command += ["--max-batch-size", str(batch), "--batch-timeout", str(timeout), "--accelerator", device, *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("The server did not become healthy in 5 minutes.")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def serve(checkpoint: Path, batch: int, timeout: float, clients: int, bodies: list, requests: int, device: str) -> dict:
    with server(checkpoint, batch, timeout, device) as (url, _), ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda b: post(f"{url}/predict", b), bodies[: 2 * clients]))  # warm-up
        start = time.perf_counter()
        answers = list(pool.map(lambda i: post(f"{url}/predict", bodies[i % len(bodies)]), range(requests)))
        wall = time.perf_counter() - start
    assert all(status == 200 for status, _ in answers), sorted({status for status, _ in answers})
    return {"requests_per_s": requests / wall, **percentiles([seconds for _, seconds in answers])}


def soak(checkpoint: Path, bodies: list, requests: int, device: str) -> dict:
    """`requests` uploads from the soak setting's clients, after 200 to warm up, with statuses, latency windows
    and the server tree's memory."""
    name, batch, timeout, clients = SOAK
    with server(checkpoint, batch, timeout, device, "--max-pending", "64") as (url, process):
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda i: post(f"{url}/predict", bodies[i % len(bodies)]), range(200)))
            before = tree_rss_mib(process.pid)
            start = time.perf_counter()
            answers = list(pool.map(lambda i: post(f"{url}/predict", bodies[i % len(bodies)]), range(requests)))
            wall = time.perf_counter() - start
        after = tree_rss_mib(process.pid)
    statuses = [status for status, _ in answers]
    seconds = [latency for _, latency in answers]
    windows = [percentiles(seconds[i : i + WINDOW])["p95_ms"] for i in range(0, requests, WINDOW)]
    return {
        "setting": name,
        "requests": requests,
        "clients": clients,
        "requests_per_s": requests / wall,
        **percentiles(seconds),
        "p99_ms": sorted(1000 * t for t in seconds)[int(0.99 * len(seconds)) - 1],
        "p95_ms_per_window": windows,
        "statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
        "rss_mib_before": before,
        "rss_mib_after": after,
    }


def tree_rss_mib(pid: int) -> float:
    """MiB resident in the server and its worker processes."""
    root = psutil.Process(pid)
    return sum(process.memory_info().rss for process in [root, *root.children(recursive=True)]) / 2**20


def in_process(checkpoint: Path, images: list[Path], requests: int, device: str) -> dict:
    """The model alone: decode, preprocess and a batch-1 forward per image, as a worker does, without HTTP."""
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location=device).eval()
    transform, channels = eval_transform(model.data_config), int(model.data_config["input_size"][0])
    times = []
    with torch.no_grad():
        for i in range(requests + 10):
            start = time.perf_counter()
            x = transform(image=load_image(images[i % len(images)], channels))["image"][None].to(device)
            model.probabilities(x).cpu()
            times.append(time.perf_counter() - start)
    return {"requests_per_s": 1 / statistics.mean(times[10:]), **percentiles(times[10:])}


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(1000 * t for t in seconds)
    return {"p50_ms": ms[len(ms) // 2], "p95_ms": ms[int(0.95 * len(ms)) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--soak", type=int, default=5000, help="requests in the soak (0: none)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    checkpoint = args.checkpoint or newest_checkpoint()
    images = test_images(checkpoint)
    bodies = [multipart(path) for path in images]
    rows = {"in-process, batch 1 (no HTTP)": in_process(checkpoint, images, args.requests, args.device)}
    for name, batch, timeout, clients in SETTINGS:
        rows[name] = serve(checkpoint, batch, timeout, clients, bodies, args.requests, args.device)
        print(f"{name}: {rows[name]}")
    soaked = soak(checkpoint, bodies, args.soak, args.device) if args.soak else None
    print(f"soak: {soaked}")
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    result = {
        "machine": machine() if args.device == "cpu" else torch.cuda.get_device_name(0),
        "device": args.device,
        "model": f"{model.hparams.get('backbone', '?')} at {model.data_config['input_size'][-1]} px",
        "requests": args.requests,
        "rows": rows,
        "soak": soaked,
    }
    print(f"written to {save_json('serve' if args.device == 'cpu' else 'serve_gpu', result)}")


if __name__ == "__main__":
    main()
