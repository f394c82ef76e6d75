"""Plain helpers every layer may use: the error type for the user's mistakes, files written atomically, and the
CPUs this process may use.

A file the project writes (checkpoint, cache, metrics, predictions, export metadata) either holds its old content
or its complete new content, never half of it: an interrupted run must not leave a truncated file that a later run
trusts. Each writer goes to a temporary name in the same folder (so the rename stays on one file system) and
`os.replace`s it into place.
"""

from __future__ import annotations

import csv
import errno
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "BadValue",
    "NotFound",
    "UserError",
    "atomic_path",
    "lazy_exports",
    "save_figure",
    "usable_cpus",
    "write_csv",
    "write_json",
    "write_text",
]


class UserError(Exception):
    """A mistake or a missing resource on the user's side, with one sentence that names the value, says why it is
    wrong and what to do. Command-line entry points print that sentence alone and exit with status 2; any other
    exception is a bug of ours and keeps its traceback."""


class BadValue(UserError, ValueError):
    """A value (a setting, an argument, a file's content) that cannot work; still a `ValueError`."""


class DiskFull(UserError, OSError):
    """A write ran out of space (or quota); the file it was replacing is untouched."""


class NotWritable(UserError, OSError):
    """A folder this run must write to is read-only or not this user's to write; nothing was written there."""


def not_writable(path: Path, err: OSError) -> NotWritable:
    """The one sentence for a write to `path` refused by the file system (`EROFS`) or its permissions."""
    if err.errno == errno.EROFS:
        why = "its file system is read-only"
    else:
        why = f"this user may not write there ({err.strerror})"
    kept = f"; the previous {path.name} is untouched" if path.exists() else ""
    return NotWritable(
        f"Cannot write {path}: {why}{kept}. Write the run to storage you can write to (hydra.run.dir=..., "
        "paths.output_dir=...), or remount it read-write."
    )


REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)  # what a file system answers to a write it will not take


class NotFound(UserError, FileNotFoundError):
    """A file or folder the user named that is not there; still a `FileNotFoundError`."""


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` (PEP 562) that imports each exported name from its module on first use.

    Importing `tl_lightning.models.backbones` runs `tl_lightning/__init__` and `models/__init__` first; with eager
    re-exports that loaded Lightning (most of an import's time), so a command line that fails on its config waited
    seconds for its one sentence. Lazy, the config checks answer before Lightning loads.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


# Free bytes below which a failed write is put down to a full disk when the writer does not say (torch.save).
FULL_BELOW = 1 << 20


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an error.

    The file gets the mode any other tool's new file gets (0666 less the umask): `mkstemp` creates it 0600, which
    `os.replace` would keep, leaving reports and checkpoints unreadable to teammates on shared storage.

    >>> with atomic_path("/tmp/tl_demo.txt") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("done")
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in REFUSED:
            raise not_writable(path, err) from None
        raise
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        # torch.save's writer reports a full disk as a RuntimeError ("iostream error"): told apart by the space left
        full = err.errno in (errno.ENOSPC, errno.EDQUOT) if isinstance(err, OSError) else free < FULL_BELOW
        if not full:
            raise
        kept = f"; the previous {path.name} is untouched" if path.exists() else ""
        raise DiskFull(
            f"No space left to write {path}: {written / 2**20:.1f} MiB were written before the disk "
            f"(or quota) ran out, {free / 2**20:.1f} MiB are free there{kept}. Free some space, or write "
            "elsewhere (paths.output_dir=...).",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, value: Any, default: Callable[[Any], Any] | None = None) -> Path:
    """Write `value` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(value, indent=2, default=default) + "\n")


def save_figure(figure: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG to `path` atomically (the format is given: the temporary name has none)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def write_csv(path: str | Path, rows: Iterable[Sequence[Any]]) -> Path:
    """Write `rows` (the header first) as CSV to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return Path(path)


def file_stamp(path: str | Path) -> list[int]:
    """What says a file is unchanged without reading it, for the audit and feature caches: size, modification and
    status-change times in nanoseconds, and the inode. A file replaced by another of the same size (a rename over
    it gives a new inode and ctime) or rewritten with its old mtime restored (ctime moves anyway; `utime` cannot set
    it) gets a new stamp, even on filesystems whose mtime has whole-second resolution."""
    info = Path(path).stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, as SLURM, containers or `taskset` set it), which can be
    far fewer than the machine's `os.cpu_count()`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
