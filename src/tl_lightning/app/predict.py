"""`python -m tl_lightning.predict CKPT PATH [PATH ...] [--out predictions.csv] [--tta] [--batch-size 64]`:
predicted classes for image files or folders, into a CSV (`inference.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import load_model, run_cli, setup_logging
from tl_lightning.inference.predict import find_images, predict_files, write_predictions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning.predict", description="Predict classes of images.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    args = parser.parse_args(argv)
    setup_logging()
    model = load_model(args.checkpoint)
    files = find_images(args.paths)
    probs = predict_files(model, files, args.batch_size, args.tta)
    write_predictions(args.out, files, probs, model.class_names)
    print(f"{len(files)} predictions written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
