"""fp32 vs int8 ONNX, side by side: file size, CPU latency (onnxruntime) and test accuracy, per checkpoint.

Each checkpoint is exported with `python -m tl_lightning export CKPT --format onnx --int8` (calibrated on its run's
training images; accuracy on its run's test split, from model.json), then both files are timed on the same
preprocessed test images: batch 1 (an app on a phone) and batch 32, median of `--repeats` runs after warm-up.

    python benchmarks/int8.py --checkpoint NAME=CKPT [NAME=CKPT ...] [--repeats 50]

e.g. the digits default (`python train.py`) and a ResNet-50 on it (`python train.py backbone=resnet50`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
from _results import machine, save_json

from tl_lightning.data.splits import read_split
from tl_lightning.inference.quantize import batches
from tl_lightning.models.module import TransferClassifier


def latency_ms(session: onnxruntime.InferenceSession, x: np.ndarray, repeats: int) -> float:
    for _ in range(5):
        session.run(["logits"], {"image": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["logits"], {"image": x})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(name: str, checkpoint: Path, repeats: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"int8_{name}_"))
    command = [
        sys.executable,
        "-m",
        "tl_lightning",
        "export",
        str(checkpoint),
        "--format",
        "onnx",
        "--int8",
        "--out",
        str(out),
    ]
    subprocess.run(command, check=True)
    info = json.loads((out / "model.json").read_text())["int8"]
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    files = [file for file, _ in read_split(checkpoint.parent.parent / "split.csv")["test"]][:32]
    x32, _ = next(batches(model, files, batch_size=32))
    row = {
        "model": f"{model.hparams.backbone} at {model.data_config['input_size'][-1]} px",
        "test_images": info["test_images"],
        "calibration_images": info["calibration_images"],
    }
    for kind in ("fp32", "int8"):
        session = onnxruntime.InferenceSession(str(out / info[kind]["path"]), providers=["CPUExecutionProvider"])
        row[kind] = {
            "size_mib": info[kind]["size_bytes"] / 2**20,
            "test_accuracy": info[kind]["test_accuracy"],
            "batch1_ms": latency_ms(session, x32[:1], repeats),
            "batch32_ms": latency_ms(session, x32, max(5, repeats // 5)),
        }
    row["size_ratio"] = row["int8"]["size_mib"] / row["fp32"]["size_mib"]
    row["batch1_speedup"] = row["fp32"]["batch1_ms"] / row["int8"]["batch1_ms"]
    row["batch32_speedup"] = row["fp32"]["batch32_ms"] / row["int8"]["batch32_ms"]
    print(name, json.dumps(row, indent=1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, help="NAME=path/to/best.ckpt")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rows = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        rows[name] = measure(name, Path(path), args.repeats)
    result = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "rows": rows}
    print(f"written to {save_json('int8', result)}")


if __name__ == "__main__":
    main()
