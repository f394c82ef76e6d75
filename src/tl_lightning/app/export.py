"""`python -m tl_lightning.export CKPT [--format onnx torchscript timm] [--out export/] [--push-to-hub REPO_ID]`:
ONNX and TorchScript files with their metadata, checked against PyTorch (`inference.export`); timm's own format
with a model card, for `timm.create_model("hf-hub:...")` (`inference.hub`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tl_lightning.app._common import load_model, run_cli
from tl_lightning.inference.export import FORMATS, export
from tl_lightning.inference.hub import push_to_hub, save_timm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning.export", description="Export a checkpoint.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--format", nargs="+", default=list(FORMATS), choices=[*FORMATS, "timm"])
    parser.add_argument("--out", type=Path, default=Path("export"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the timm export to this Hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    args = parser.parse_args(argv)
    if args.push_to_hub and "timm" not in args.format:
        parser.error("--push-to-hub uploads the timm format: add --format timm")
    model = load_model(args.checkpoint)
    graphs = tuple(f for f in args.format if f != "timm")
    for item in export(model, args.out, graphs, args.tolerance) if graphs else []:
        check = "not run (pip install onnxruntime)" if item.max_abs_diff is None else f"{item.max_abs_diff:.2e}"
        print(f"{item.format}: {item.path}  max |export - PyTorch| = {check}")
    if "timm" in args.format:
        metrics, recipe = run_record(args.checkpoint)
        diff = save_timm(model, args.out, metrics, recipe, args.tolerance)
        print(f"timm: {args.out}/config.json, model.safetensors, README.md  max |timm - PyTorch| = {diff:.2e}")
        if args.push_to_hub:
            print(f"Uploaded to {push_to_hub(args.out, args.push_to_hub, args.private)}")


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
