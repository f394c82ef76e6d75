"""`python -m tl_lightning predict CKPT PATH [PATH ...] [--out predictions.csv] [--tta] [--batch-size 64]`:
predicted classes for image files or folders, into a CSV (`inference.predict`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import load_model, run_cli, setup_logging
from tl_lightning.app.checks import check_writable
from tl_lightning.inference.predict import find_images, predict_files, write_predictions, write_skipped
from tl_lightning.utils import BadValue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning predict", description="Predict classes of images.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("paths", nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    args = parser.parse_args(argv)
    setup_logging()
    check_writable("--out", args.out.parent)  # before the model runs, not after
    files = find_images(args.paths)
    model = load_model(args.checkpoint)
    result = predict_files(model, files, args.batch_size, args.tta)
    skipped = args.out.with_name("skipped.csv")
    if result.skipped:
        write_skipped(skipped, result.skipped)
    if not result.files:
        raise BadValue(f"None of the {len(files)} files could be read as images; reasons in {skipped}.")
    write_predictions(args.out, result.files, result.probabilities, model.class_names)
    left_out = f"; {len(result.skipped)} files skipped, listed with reasons in {skipped}" if result.skipped else ""
    print(f"{len(result.files)} predictions written to {args.out}{left_out}")


if __name__ == "__main__":
    run_cli(main)
