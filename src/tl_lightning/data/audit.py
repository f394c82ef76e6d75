"""One pass over every file before training: what is unreadable, ignored, duplicated across splits, imbalanced.

Written here because no maintained library audits an ImageFolder: peers either crash hours into a run on a
truncated JPEG or train silently on leaked duplicates. Files are fully decoded (truncation only shows then)
in a thread pool (PIL releases the GIL while decoding), and hashed for exact duplicates. With a cache folder,
each file's result is kept under its path and stat stamp (`utils.file_stamp`), so a second run only stats the files
and decodes those that changed. The command line is `python -m tl_lightning audit DATA_ROOT`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from tl_lightning.data.images import DECODE_ERRORS
from tl_lightning.utils import file_stamp, write_json, write_text

log = logging.getLogger(__name__)

# Warn above this ratio of largest to smallest training class.
IMBALANCE_WARNING = 10.0


@dataclass
class FileCheck:
    """What one file turned out to be."""

    sha256: str
    mode: str | None = None
    size: tuple[int, int] | None = None
    problem: str | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> FileCheck:
        size = saved.get("size")
        return cls(saved["sha256"], saved.get("mode"), tuple(size) if size else None, saved.get("problem"))


def check_file(path: Path) -> FileCheck:
    """Hash `path` and decode it fully; a file that fails says why in `problem`."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return FileCheck(digest, problem="empty file (0 bytes)")
    if path.suffix.lower() == ".npy":
        return _check_array(data, digest)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return FileCheck(digest, mode=image.mode, size=image.size)
    except UnidentifiedImageError:
        return FileCheck(digest, problem="not an image")
    except DECODE_ERRORS as err:
        return FileCheck(digest, problem=f"unreadable: {err}")


def _check_array(data: bytes, digest: str) -> FileCheck:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as err:
        return FileCheck(digest, problem=f"unreadable array: {err}")
    if array.ndim not in (2, 3):
        return FileCheck(digest, problem=f"array of shape {array.shape}, not HxW or HxWxC")
    bands = array.shape[2] if array.ndim == 3 else 1
    return FileCheck(digest, mode=f"array:{bands}x{array.dtype}", size=(array.shape[1], array.shape[0]))


def check_files(paths: Iterable[Path], progress: bool = True, cache: str | Path | None = None) -> dict[Path, FileCheck]:
    """`check_file` for every path; with `cache` (a folder), unchanged files' results are read back, not redone."""
    paths = list(paths)
    stored = AuditCache(cache) if cache is not None else None
    known = stored.load() if stored is not None else {}
    keys = {path: os.path.abspath(path) for path in paths} if stored is not None else {}
    stamps = {path: file_stamp(path) for path in paths} if stored is not None else {}
    found = (
        {
            p: FileCheck.from_dict(known[keys[p]]["check"])
            for p in paths
            if known.get(keys[p], {}).get("stamp") == stamps[p]
        }
        if known
        else {}
    )
    todo = [p for p in paths if p not in found]
    if todo:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            checks = pool.map(check_file, todo)
            bar = tqdm(checks, total=len(todo), desc="Auditing images", unit="img", disable=not progress or None)
            found |= dict(zip(todo, bar, strict=True))
    if stored is not None and todo:
        stored.save(known | {keys[p]: {"stamp": stamps[p], "check": asdict(found[p])} for p in paths})
    if stored is not None:
        log.info("Audit: %d files checked, %d unchanged since the cached audit", len(todo), len(paths) - len(todo))
    return {p: found[p] for p in paths}


class AuditCache:
    """Per-file audit results in `folder/audit.json`, by absolute path, written through a temp file renamed."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder).expanduser() / "audit.json"

    def load(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            log.warning("Ignoring an unreadable audit cache %s: every file is checked again.", self.path)
            return {}

    def save(self, entries: dict[str, dict]) -> None:
        write_text(self.path, json.dumps(entries))


@dataclass
class AuditReport:
    """Findings over a `{split: {class: files}}` layout; `bad` files are those that cannot be trained on."""

    root: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    modes: dict[str, int] = field(default_factory=dict)
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    duplicates: list[list[str]] = field(default_factory=list)

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest training class."""
        train = [n for n in self.counts.get("train", {}).values() if n]
        return max(train) / min(train) if train else 1.0

    def summary(self) -> str:
        images = sum(sum(c.values()) for c in self.counts.values())
        lines = [
            f"Audit of {self.root}: {images} usable images",
            *(f"  {split}: {sum(c.values())} images in {len(c)} classes" for split, c in self.counts.items()),
            f"  imbalance ratio (largest / smallest training class): {self.imbalance_ratio:.1f}",
            f"  image modes: {dict(sorted(self.modes.items()))}; sizes from {self.min_size} to {self.max_size}",
            f"  bad files skipped: {len(self.bad)}",
            *(f"    {path}: {problem}" for path, problem in sorted(self.bad.items())[:20]),
            f"  ignored (hidden or not an image type): {len(self.ignored)}",
            *(f"    {path}" for path in sorted(self.ignored)[:20]),
            f"  identical files in more than one split: {len(self.duplicates)}",
            *(f"    {' = '.join(group)}" for group in self.duplicates[:10]),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "counts": self.counts,
            "imbalance_ratio": self.imbalance_ratio,
            "modes": self.modes,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "bad": self.bad,
            "ignored": self.ignored,
            "duplicates_across_splits": self.duplicates,
        }

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())


def describe_files(report: AuditReport, checks: dict[Path, FileCheck]) -> None:
    """Fill the report's bad files, modes and size range from per-file checks."""
    report.bad = {str(p): c.problem for p, c in checks.items() if c.problem}
    good = [c for c in checks.values() if not c.problem]
    report.modes = dict(Counter(c.mode for c in good))
    if good:
        report.min_size = min((c.size for c in good), key=lambda s: s[0] * s[1])
        report.max_size = max((c.size for c in good), key=lambda s: s[0] * s[1])


def cross_split_duplicates(splits: dict[str, dict[str, list[Path]]], checks: dict[Path, FileCheck]) -> list[list[str]]:
    """Groups of byte-identical files that sit in more than one split (train/test leakage)."""
    by_hash: dict[str, list[tuple[str, Path]]] = {}
    for split, classes in splits.items():
        for paths in classes.values():
            for path in paths:
                by_hash.setdefault(checks[path].sha256, []).append((split, path))
    return [sorted(str(p) for _, p in group) for group in by_hash.values() if len({split for split, _ in group}) > 1]


def build_report(
    root: Path, splits: dict[str, dict[str, list[Path]]], checks: dict[Path, FileCheck], ignored: list[str]
) -> AuditReport:
    """The report for a final split layout, with a warning for leaked duplicates and for heavy imbalance."""
    report = AuditReport(root=str(root), ignored=ignored)
    report.counts = {split: {c: len(ps) for c, ps in sorted(classes.items())} for split, classes in splits.items()}
    if checks:
        describe_files(report, checks)
        report.duplicates = cross_split_duplicates(splits, checks)
    if report.bad:
        log.warning("Skipping %d unreadable files (see audit.json), e.g. %s", len(report.bad), next(iter(report.bad)))
    if report.duplicates:
        rank_zero_warn(
            f"{len(report.duplicates)} files are byte-identical across splits (e.g. {report.duplicates[0]}): "
            "test results will be optimistic.\nHINT: remove the copies; audit.json lists them all."
        )
    if report.imbalance_ratio > IMBALANCE_WARNING:
        rank_zero_warn(
            f"The largest training class has {report.imbalance_ratio:.0f}x the images of the smallest.\n"
            "HINT: watch val/acc_macro, and consider model.imbalance.class_weights=balanced."
        )
    return report
