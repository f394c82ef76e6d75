"""`python -m tl_lightning export CKPT [--format onnx torchscript executorch litert timm] [--out export/] [--int8]
[--push-to-hub ID]`: ONNX and TorchScript files with their metadata, checked against PyTorch (`inference.export`);
files for phones, each checked in its own runtime: ExecuTorch programs (`inference.on_device`) and LiteRT files
(`inference.litert`); with `--int8`, an int8 file beside each fp32 ONNX or phone one, with both files' size and test
accuracy (`inference.quantize`); timm's own format with a model card, for `timm.create_model("hf-hub:...")`
(`inference.hub`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tl_lightning.app._common import load_model, run_cli
from tl_lightning.app.checks import check_writable
from tl_lightning.data.splits import check_split_files, read_split
from tl_lightning.inference import litert, on_device
from tl_lightning.inference.export import FORMATS, export, metadata
from tl_lightning.inference.hub import push_to_hub, save_timm
from tl_lightning.inference.quantize import compare, quantize
from tl_lightning.utils import BadValue, write_json

# The phone formats: each runtime's module writes, loads and scores its files (`inference.on_device`, `.litert`).
PHONES = {"executorch": on_device, "litert": litert}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning export", description="Export a checkpoint.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--format", nargs="+", default=list(FORMATS), choices=[*FORMATS, *PHONES, "timm"])
    parser.add_argument("--out", type=Path, default=Path("export"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the timm export to this Hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument(
        "--int8", action="store_true", help="also model.int8.onnx / .pte / .tflite, statically quantized"
    )
    parser.add_argument("--calibration-images", type=int, default=256, help="training images that calibrate int8")
    args = parser.parse_args(argv)
    if args.push_to_hub and "timm" not in args.format:
        parser.error("--push-to-hub uploads the timm format: add --format timm")
    if args.int8 and not {"onnx", *PHONES} & set(args.format):
        parser.error("--int8 quantizes the ONNX and phone exports: add --format onnx, executorch or litert")
    if args.calibration_images < 1:
        raise BadValue(f"--calibration-images={args.calibration_images}: it must be at least 1.")
    for phone in PHONES.keys() & set(args.format):
        PHONES[phone].require()
    check_writable("--out", args.out)  # before the model loads, not after the export ran
    model = load_model(args.checkpoint)
    split_csv = args.checkpoint.resolve().parent.parent / "split.csv"
    split = read_split(split_csv) if args.int8 else {}  # before the work
    check_split_files(split, split_csv)
    graphs = tuple(f for f in args.format if f in FORMATS)
    for item in export(model, args.out, graphs, args.tolerance) if graphs else []:
        check = "not run (pip install onnxruntime)" if item.max_abs_diff is None else f"{item.max_abs_diff:.2e}"
        print(f"{item.format}: {item.path}  max |export - PyTorch| = {check}")
    if args.int8 and "onnx" in args.format:
        export_int8(model, args.out, split, args.calibration_images)
    for phone in [f for f in args.format if f in PHONES]:
        export_phone(model, args.out, phone, split if args.int8 else None, args.calibration_images, args.tolerance)
    if "timm" in args.format:
        metrics, recipe = run_record(args.checkpoint)
        diff = save_timm(model, args.out, metrics, recipe, args.tolerance)
        print(f"timm: {args.out}/config.json, model.safetensors, README.md  max |timm - PyTorch| = {diff:.2e}")
        if args.push_to_hub:
            print(f"Uploaded to {push_to_hub(args.out, args.push_to_hub, args.private)}")


def export_int8(model: Any, out: Path, split: dict, calibration_images: int) -> None:
    """`out/model.int8.onnx`, calibrated on a random draw of the run's training images; both files' size and test
    accuracy printed and added to `model.json`."""
    calibration, test = calibration_and_test(model, split, calibration_images, out)
    int8 = quantize(model, out / "model.onnx", out / "model.int8.onnx", calibration)
    sizes = compare(model, out / "model.onnx", int8, test or None)
    print_sizes(out, sizes)
    info = json.loads((out / "model.json").read_text())
    write_json(
        out / "model.json", info | {"int8": {"calibration_images": len(calibration), "test_images": len(test), **sizes}}
    )


def export_phone(
    model: Any, out: Path, phone: str, split: dict | None, calibration_images: int, tolerance: float
) -> None:
    """`out/model.pte` (`phone="executorch"`) or `out/model.tflite` (`"litert"`) and, given the run's `split`, its
    int8 twin, each run in the format's own runtime; the input shape, sizes and test accuracy go into `model.json`
    under the format's name, which a mobile app reads."""
    runtime = PHONES[phone]
    fp32 = runtime.write(model, out / f"model{runtime.SUFFIX}")
    diff = runtime.parity(model, fp32)
    if diff > tolerance:
        raise RuntimeError(f"{fp32} differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); do not ship it.")
    print(f"{phone}: {fp32}  max |export - PyTorch| = {diff:.2e}")
    # one preprocessed image a call: a phone classifies one photo at a time, and a static shape lets XNNPACK plan
    shape = [1, *(int(v) for v in model.data_config["input_size"])]
    record: dict[str, Any] = {"input_shape": shape, "delegate": "XNNPACK"}
    if split is not None:
        calibration, test = calibration_and_test(model, split, calibration_images, out)
        int8 = runtime.write(model, out / f"model.int8{runtime.SUFFIX}", calibration)
        sizes = compare(model, fp32, int8, test or None, score=runtime.accuracy)
        sizes["int8"] |= runtime.input_quantization(int8)
        print_sizes(out, sizes)
        record |= {"calibration_images": len(calibration), "test_images": len(test), **sizes}
    info = json.loads((out / "model.json").read_text()) if (out / "model.json").is_file() else metadata(model)
    write_json(out / "model.json", info | {phone: record})


def calibration_and_test(
    model: Any, split: dict, calibration_images: int, out: Path
) -> tuple[list[Path], list[tuple[Path, int]]]:
    """A random draw of the run's training images (seed 0: the same file each time) and its labelled test images."""
    train = [file for file, _ in split.get("train", [])]
    if not train:
        raise BadValue(f"The run's split.csv lists no training images to calibrate int8 on ({out}).")
    calibration = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:calibration_images]]
    index = {name: i for i, name in enumerate(model.class_names)}
    return calibration, [(file, index[name]) for file, name in split.get("test", []) if name in index]


def print_sizes(out: Path, sizes: dict[str, dict]) -> None:
    for name, row in sizes.items():
        score = "not measured (no test split)" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        print(f"{name}: {out / row['path']}  {row['size_bytes'] / 2**20:.2f} MiB  test accuracy {score}")


def run_record(checkpoint: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The test metrics and the recipe's choices of the run that wrote `checkpoint` (`<run>/checkpoints/x.ckpt`), for
    the model card; empty (None: no config.yaml) where the run folder is not there."""
    run = checkpoint.resolve().parent.parent
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    if not (run / "config.yaml").is_file():
        return metrics, None
    lines = (run / "config.yaml").read_text().splitlines()
    return metrics, [line.removeprefix("# recipe: ") for line in lines if line.startswith("# recipe: ")]


if __name__ == "__main__":
    run_cli(main)
