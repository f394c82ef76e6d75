"""What every command-line tool does the same way: load a checkpoint, or stop with one sentence."""

from __future__ import annotations

import logging
from pathlib import Path

from tl_lightning.models.module import TransferClassifier


def load_model(path: Path) -> TransferClassifier:
    """A `TransferClassifier` on the CPU from `path`; a missing file exits with the checks' sentence."""
    try:
        return TransferClassifier.load_from_checkpoint(path, map_location="cpu")
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
