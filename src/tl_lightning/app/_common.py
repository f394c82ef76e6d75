"""What every command-line tool does the same way: load a checkpoint, or stop with one sentence."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tl_lightning.utils import UserError

if TYPE_CHECKING:  # imported when a model is loaded: failing on a bad argument should not wait for Lightning
    from tl_lightning.models.module import TransferClassifier


def load_model(path: Path) -> TransferClassifier:
    """A `TransferClassifier` on the CPU from `path`."""
    from tl_lightning.models.module import TransferClassifier

    return TransferClassifier.load_from_checkpoint(path, map_location="cpu")  # checked: a UserError names what is wrong


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a `UserError` as its sentence alone on stderr and exit with status 2; other errors keep their
    traceback (they are bugs). `HYDRA_FULL_ERROR=1` shows the traceback of user errors too."""
    try:
        yield
    except Exception as err:
        cause = _user_error(err)  # Hydra's instantiate wraps what a constructor raises
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_error(err: BaseException | None) -> UserError | None:
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__ or err.__context__
    return err


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    with user_errors():
        main(None)
