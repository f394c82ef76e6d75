"""`python -m tl_lightning optimize DATA_ROOT OUT [--val-fraction 0.15] [--test-fraction 0.15] [--seed 0]`:
an image folder, audited and split as training splits it, into LitData chunks under OUT (a folder or `s3://...`),
for `data=streaming data.input_dir=OUT` (`data.streaming`; the `[stream]` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import run_cli, setup_logging
from tl_lightning.app.checks import check_writable
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.utils import BadValue, UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning optimize", description=__doc__.split(":")[1])
    parser.add_argument("root", help="data folder: class folders, or train/ [val/] [test/] of class folders")
    parser.add_argument("out", help="output folder, or s3:// / gs:// URL")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="as data.val_fraction")
    parser.add_argument("--test-fraction", type=float, default=0.15, help="as data.test_fraction")
    parser.add_argument("--seed", type=int, default=0, help="as data.seed: the split's seed")
    parser.add_argument("--chunk-bytes", default="64MB", help="size of each chunk file")
    parser.add_argument("--workers", type=int, default=1, help="processes that write chunks")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise BadValue(f"--workers={args.workers}: it must be at least 1.")
    if "://" not in args.out:  # a bucket's permissions are LitData's to report
        check_writable("out", Path(args.out))
    try:
        import litdata  # noqa: F401

        from tl_lightning.data.streaming import optimize_folder
    except ImportError as err:
        raise UserError(
            f"Writing chunks needs LitData ({err.name} is missing): pip install 'tl_lightning[stream]'."
        ) from None
    setup_logging()
    datamodule = ImageFolderDataModule(
        args.root, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed
    )
    _ = datamodule.splits  # scanning runs the audit: bad files are left out
    print(datamodule.audit_report.summary())
    counts = optimize_folder(datamodule, args.out, args.chunk_bytes, args.workers)
    written = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"Wrote {written} samples to {args.out}; train from them with data=streaming data.input_dir={args.out}")


if __name__ == "__main__":
    run_cli(main)
