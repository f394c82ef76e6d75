"""`python -m tl_lightning audit DATA_ROOT [--json audit.json]`: the data audit alone, before any training
(`data.audit`): unreadable files, ignored entries, modes, sizes, imbalance, duplicates across splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from tl_lightning.app._common import run_cli, setup_logging
from tl_lightning.data.datamodule import ImageFolderDataModule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning audit", description="Audit an image folder.")
    parser.add_argument("root", help="data folder: class folders, or train/ [val/] [test/] of class folders")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    datamodule = ImageFolderDataModule(args.root)
    _ = datamodule.splits  # scanning runs the audit
    print(datamodule.audit_report.summary())
    if args.json:
        datamodule.audit_report.save(args.json)


if __name__ == "__main__":
    run_cli(main)
