"""Training and inference images/s for common backbones at their native sizes: fp32 vs bf16/AMP, channels-last.

timm's benchmark protocol: synthetic input of the model's native size, warm-up steps first, then the median of
timed steps. Training steps are forward + backward + AdamW step of `TransferClassifier` with every group
trainable; inference is a no-grad forward in eval mode. Mixed precision is autocast to bfloat16 on a CPU and to
float16 (with a GradScaler-free step; the timing is the same) on a GPU.

    python benchmarks/throughput.py [--models resnet50 efficientnet_b0 efficientnet_b4] [--settings fp32 amp ...]
                                    [--batch-size 8] [--warmup 2] [--steps 5] [--device cpu|cuda] [--merge]

`--merge` replaces only the measured (model, setting) rows in an existing results file, so slow combinations
can be measured separately with fewer steps (bf16 on a CPU without native bf16 instructions is ~10x slower).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from _results import RESULTS, machine, save_json

from tl_lightning.models.module import TransferClassifier

SETTINGS = {  # name: (autocast, channels_last)
    "fp32": (False, False),
    "fp32+channels_last": (False, True),
    "amp": (True, False),
    "amp+channels_last": (True, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, setting: str, batch: int, warmup: int, steps: int, device: torch.device) -> dict:
    autocast, channels_last = SETTINGS[setting]
    torch.manual_seed(0)
    model = TransferClassifier(name, num_classes=1000, pretrained=False, performance={"channels_last": channels_last})
    model.configure_model()
    model.to(device)
    size = tuple(model.data_config["input_size"])
    x = torch.randn(batch, *size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    cast = torch.autocast(device.type, dtype=dtype) if autocast else contextlib.nullcontext()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:
        with cast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad(), cast:
            model(x)

    result = {"input_size": list(size), "batch_size": batch}
    for kind, step, mode in (("train", train_step, True), ("infer", infer_step, False)):
        model.train(mode)
        times = []
        for i in range(warmup + steps):
            _sync(device)
            started = time.perf_counter()
            step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - started)
        result[f"{kind}_img_s"] = batch / statistics.median(times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0", "efficientnet_b4"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="keep other rows of an existing results file")
    args = parser.parse_args()
    device = torch.device(args.device)
    tag = "throughput" if device.type == "cpu" else "throughput_gpu"
    rows = []
    for name in args.models:
        for setting in args.settings:
            row = {"model": name, "setting": setting}
            row |= measure(name, setting, args.batch_size, args.warmup, args.steps, device) | {"steps": args.steps}
            rows.append(row)
            print(
                f"{name:16s} {setting:20s} {row['input_size'][1]:>4d}px  train {row['train_img_s']:8.1f} img/s  "
                f"infer {row['infer_img_s']:8.1f} img/s",
                flush=True,
            )
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    if args.merge and (args.out / f"{tag}.json").is_file():
        measured = {(r["model"], r["setting"]) for r in rows}
        kept = json.loads((args.out / f"{tag}.json").read_text())["rows"]
        rows = sorted(
            [r for r in kept if (r["model"], r["setting"]) not in measured] + rows,
            key=lambda r: (r["model"], list(SETTINGS).index(r["setting"])),
        )
    path = save_json(tag, {"machine": where, "device": device.type, "rows": rows}, args.out)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
