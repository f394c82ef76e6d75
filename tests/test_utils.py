"""Files the project writes: atomic, and readable as any other tool's output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tl_lightning.utils import write_json, write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int):
    previous = os.umask(umask)
    try:
        text = write_text(tmp_path / "config.yaml", "a: 1\n")
        data = write_json(tmp_path / "metrics.json", {"acc": 1.0})
    finally:
        os.umask(previous)
    for path in (text, data):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert text.read_text() == "a: 1\n" and not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
