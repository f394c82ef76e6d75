"""`python -m tl_lightning.export CKPT [--format onnx torchscript] [--out export/] [--tolerance 1e-4]`: ONNX and
TorchScript files with their metadata, checked against PyTorch (`inference.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import load_model, run_cli
from tl_lightning.inference.export import FORMATS, export


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning.export", description="Export a checkpoint.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--format", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--out", type=Path, default=Path("export"))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    model = load_model(args.checkpoint)
    for item in export(model, args.out, tuple(args.format), args.tolerance):
        check = "not run (pip install onnxruntime)" if item.max_abs_diff is None else f"{item.max_abs_diff:.2e}"
        print(f"{item.format}: {item.path}  max |export - PyTorch| = {check}")


if __name__ == "__main__":
    run_cli(main)
