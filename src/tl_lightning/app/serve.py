"""`python -m tl_lightning serve CKPT [--port 8000] [--top-k 5] [--max-batch-size 1] [--batch-timeout 0]
[--workers-per-device 1] [--ui]`: an HTTP endpoint for a checkpoint (`inference.serve`, LitServe; the `[serve]`
extra).

POST /predict with an image (`curl -F image=@leaf.jpg`, or JSON `{"image": "<base64>"}`) answers the top-k
classes and their calibrated probabilities; GET /health answers "ok" once every worker has loaded the model, and
/info the model's classes, preprocessing, its "not sure" threshold with each class's validation accuracy, and what
the threshold gave on the run's test split. `--ui` adds a page for people at `/ui`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
from pathlib import Path

from tl_lightning.app._common import load_model, run_cli, setup_logging
from tl_lightning.models.checkpoint import read_record
from tl_lightning.utils import BadValue, UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning serve", description="Serve a checkpoint over HTTP.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--host", default="0.0.0.0", help="0.0.0.0: every interface; 127.0.0.1: this machine only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--top-k", type=int, default=5, help="classes per answer, unless the request says")
    parser.add_argument("--max-batch-size", type=int, default=1, help="requests run through the model together")
    parser.add_argument("--batch-timeout", type=float, default=0.0, help="seconds to wait for a batch to fill")
    parser.add_argument("--workers-per-device", type=int, default=1)
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--devices", default="auto", help="how many GPUs, or auto")
    parser.add_argument("--max-request-mb", type=float, default=20.0, help="larger requests are answered 413")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait before a 504")
    parser.add_argument(
        "--max-pending", type=int, default=64, help="requests in flight beyond which new ones get 503 + Retry-After"
    )
    parser.add_argument("--ui", action="store_true", help="also a page for people at /ui: take or upload a photo")
    args = parser.parse_args(argv)
    for name in ("top_k", "max_batch_size", "workers_per_device"):
        if getattr(args, name) < 1:
            raise BadValue(f"--{name.replace('_', '-')}={getattr(args, name)}: it must be at least 1.")
    for name in ("batch_timeout", "max_request_mb", "timeout", "max_pending"):
        if not getattr(args, name) >= 0:
            raise BadValue(f"--{name.replace('_', '-')}={getattr(args, name)}: it must be 0 or more.")
    devices = args.devices if args.devices == "auto" else _count("--devices", args.devices)
    _check_port(args.host, args.port)
    try:
        from tl_lightning.inference.serve import server
    except ImportError as err:
        raise UserError(
            f"Serving needs LitServe and python-multipart ({err.name} is missing): pip install 'tl_lightning[serve]'."
        ) from None
    setup_logging()
    model = load_model(args.checkpoint)  # a bad checkpoint stops here with one sentence, not in every worker

    metadata = {
        "checkpoint": str(args.checkpoint),
        "classes": model.class_names,
        "input_size": list(model.data_config["input_size"]),
        "temperature": float(model.temperature),
        "abstention": read_record(args.checkpoint).get("abstention"),
        "test": run_test_figures(args.checkpoint),
    }
    lit = server(
        args.checkpoint,
        top_k=args.top_k,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers_per_device=args.workers_per_device,
        accelerator=args.accelerator,
        devices=devices,
        max_request_mb=args.max_request_mb,
        timeout=args.timeout,
        model_metadata=metadata,
        max_pending=args.max_pending,
        ui=args.ui,
    )
    signal.signal(signal.SIGTERM, functools.partial(_stop, os.getpid()))
    lit.run(host=args.host, port=args.port, generate_client_file=False)


def _stop(main_pid: int, signum: int, frame: object) -> None:
    """SIGTERM (`kill PID`, a process supervisor, `docker stop`) takes Ctrl-C's way out: LitServe's graceful
    shutdown, which stops its HTTP and inference processes. Without it only this process ended and they stayed,
    holding the port and the model's memory, so the next start failed with the port in use. The HTTP processes
    are forked with this handler and get SIGTERM from that shutdown: they end as they would without it."""
    if os.getpid() == main_pid:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def run_test_figures(checkpoint: Path) -> dict[str, float] | None:
    """What the run's test split says (its metrics.json, beside `checkpoints/`): accuracy, each class's accuracy,
    and what the "not sure" threshold gave. The page shows each class's test accuracy rather than its validation
    accuracy where both exist: the test split chose nothing, while a kept probe has trained on validation."""
    metrics_file = checkpoint.resolve().parent.parent / "metrics.json"
    if not metrics_file.is_file():
        return None
    metrics = json.loads(metrics_file.read_text())
    keys = ("test/acc", "test/answered_accuracy", "test/answered_share")
    figures = {key.removeprefix("test/"): metrics[key] for key in keys if key in metrics}
    prefix = "test/acc_class/"
    classes = {key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)}
    return figures | ({"class_accuracy": classes} if classes else {})


def _count(flag: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise BadValue(f"{flag}={value}: give a number of devices (1 or more), or auto.")
    return int(value)


def _check_port(host: str, port: int) -> None:
    """The port is free: found now, not after the workers have loaded the model."""
    if not 0 <= port <= 65535:
        raise BadValue(f"--port={port}: a port is a number from 0 to 65535 (e.g. 8000).")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise BadValue(f"Cannot listen on {host}:{port} ({err.strerror}); pass another --port.") from None


if __name__ == "__main__":
    run_cli(main)
