"""What every command-line tool does the same way: load a checkpoint, or stop with one sentence."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tl_lightning.models.module import TransferClassifier
from tl_lightning.utils import UserError


def load_model(path: Path) -> TransferClassifier:
    """A `TransferClassifier` on the CPU from `path`; a missing file exits with the checks' sentence."""
    try:
        return TransferClassifier.load_from_checkpoint(path, map_location="cpu")
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a `UserError` as its sentence alone on stderr and exit with status 2; other errors keep their
    traceback (they are bugs). `HYDRA_FULL_ERROR=1` shows the traceback of user errors too."""
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    with user_errors():
        main(None)
