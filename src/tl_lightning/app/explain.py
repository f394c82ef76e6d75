"""`python -m tl_lightning explain CKPT IMAGE [IMAGE ...] [--out gradcam/] [--class NAME] [--layer MODULE]` or
`... CKPT --top-losses RUN`: Grad-CAM overlays, one PNG per image (`evaluation.explain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import load_model, run_cli
from tl_lightning.app.checks import check_writable
from tl_lightning.evaluation.explain import explain_files, top_loss_files
from tl_lightning.inference.predict import find_images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning explain", description="Grad-CAM of predictions.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("paths", nargs="*", help="image files or folders")
    parser.add_argument("--top-losses", type=Path, metavar="RUN", help="explain a run's highest-loss test images")
    parser.add_argument("--out", type=Path, default=Path("gradcam"))
    parser.add_argument("--class", dest="class_name", help="explain this class instead of the predicted one")
    parser.add_argument("--layer", help="module of model.backbone to weigh (default: last feature stage)")
    args = parser.parse_args(argv)
    if not args.paths and args.top_losses is None:
        raise SystemExit("Give image files or folders, or --top-losses RUN.")
    check_writable("--out", args.out)
    model = load_model(args.checkpoint)
    files, labels = top_loss_files(args.top_losses) if args.top_losses else (find_images(args.paths), None)
    written = explain_files(model, files, args.out, args.class_name, args.layer, labels)
    print(f"{len(written)} Grad-CAM overlays written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
