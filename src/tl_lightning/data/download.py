"""Image folders published as one zip archive: downloaded on first use, verified, extracted, then trained on.

Written here rather than with torchvision's `download_and_extract_archive`, which checks MD5 only, cannot resume a
cut transfer, extracts in place (an interrupted extraction looks finished) and takes no lock (two jobs of a
multirun would download and extract over each other). Here:

- the transfer streams with a progress bar into `<file>.part` beside the target and resumes it with an HTTP Range
  request after an interruption; URLs are tried in order and the size and SHA-256 decide;
- extraction goes into a temporary folder renamed into place, so the dataset folder exists only when complete;
- a file lock serialises preparers, so concurrent jobs wait for one download instead of making several.

Any data config can declare an `archive` (see `conf/data/plants.yaml`), so a team can publish its own zipped
image folder the same way.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock
from tqdm.auto import tqdm

from tl_lightning.utils import UserError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Tries per URL; each resumes where the last one stopped.
ATTEMPTS = 3


class DownloadError(UserError):
    """The archive could not be had, or was not the published file."""


@dataclass(frozen=True)
class Archive:
    """A zipped image folder at one or more URLs, identified by its size and SHA-256.

    Args:
        name: the dataset's folder name under `<cache_dir>/datasets/`; change it when the archive changes.
        filename: the archive's file name under `<cache_dir>/downloads/`.
        urls: where to fetch it from, tried in order.
        size, sha256: the published file's size in bytes and SHA-256; a download that differs is refused.
        inner: the folder inside the archive that holds the class folders ("" for the archive's top level).
        exclude: class folders inside `inner` to leave out (e.g. a background class that is not part of the data).
    """

    name: str
    filename: str
    urls: Sequence[str]
    size: int
    sha256: str
    inner: str = ""
    exclude: Sequence[str] = ()

    @classmethod
    def of(cls, value: Archive | Mapping[str, Any]) -> Archive:
        return value if isinstance(value, Archive) else cls(**value)

    def target(self, cache_dir: str | Path) -> Path:
        return Path(cache_dir).expanduser() / "datasets" / self.name

    def manual_steps(self, cache_dir: str | Path) -> str:
        inner = f"/{self.inner}" if self.inner else ""
        exclude = f", delete its {', '.join(self.exclude)} folder(s)" if self.exclude else ""
        download = Path(cache_dir).expanduser() / "downloads" / self.filename
        return (
            f"To use a copy you have, check its SHA-256 (`sha256sum {self.filename}`), unzip it{exclude} and pass "
            f"data.root=<unzipped folder>{inner}; or put the zip at {download} and run again."
        )


def fetch_archive(archive: Archive, cache_dir: str | Path, progress: bool = True, timeout: float = 20.0) -> Path:
    """The extracted dataset folder of `archive` under `cache_dir`, downloaded and extracted first if it is not there.

    Raises:
        DownloadError: no URL gave the published file; the message names the URLs, the size, the SHA-256 and the
            manual steps.
    """
    target = archive.target(cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{archive.name}.lock"):
        if target.is_dir():  # another job finished it while this one waited
            return target
        path = _download(archive, Path(cache_dir).expanduser() / "downloads", progress, timeout, cache_dir)
        log.info("Extracting %s into %s", path, target)
        _extract(archive, path, target)
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes, on every OS (`filelock`; `fcntl` exists only on POSIX)."""
    with FileLock(path):
        yield


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(archive: Archive, folder: Path, progress: bool, timeout: float, cache_dir: str | Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / archive.filename
    if path.is_file() and path.stat().st_size == archive.size and sha256_file(path) == archive.sha256:
        return path
    partial = path.with_name(path.name + ".part")
    failures = []
    for url in archive.urls:
        try:
            _transfer(url, partial, archive.size, progress, timeout)
        except (OSError, http.client.HTTPException) as err:  # URLError, time-outs and cut connections included
            failures.append(f"{url}: {err}")
            continue
        size, digest = partial.stat().st_size, sha256_file(partial)
        if size == archive.size and digest == archive.sha256:
            os.replace(partial, path)
            return path
        partial.unlink()
        failures.append(f"{url}: got {size:,} bytes with SHA-256 {digest}, not the published file")
    raise DownloadError(
        f"Could not download {archive.filename} ({archive.size:,} bytes, SHA-256 {archive.sha256}): "
        f"{'; '.join(failures)}. {archive.manual_steps(cache_dir)}"
    )


def _transfer(url: str, partial: Path, size: int, progress: bool, timeout: float) -> None:
    """Fetch `url` into `partial`, resuming what is there with a Range request, while each try makes progress.

    `http.client` returns a short read, not an error, when a server drops the connection: the received size is
    what tells a cut transfer.
    """
    for _ in range(ATTEMPTS):
        done = _size(partial)
        if done >= size:
            return
        try:
            _stream(url, partial, done, size, progress, timeout)
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as err:
            log.warning("Transfer of %s interrupted (%s).", url, err)
        if _size(partial) <= done:
            break
        if _size(partial) < size:
            log.warning("Transfer of %s stopped at %d of %d bytes; resuming.", url, _size(partial), size)
    if _size(partial) < size:
        raise ConnectionError(f"the transfer stopped at {_size(partial):,} of {size:,} bytes")


def _stream(url: str, partial: Path, done: int, size: int, progress: bool, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = done > 0 and response.status == 206  # a server that ignores Range sends everything again
        bar = tqdm(
            total=size,
            initial=done if resumed else 0,
            unit="B",
            unit_scale=True,
            desc=partial.name.removesuffix(".part"),
            disable=not progress or None,
        )
        with open(partial, "ab" if resumed else "wb") as out, bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _extract(archive: Archive, path: Path, target: Path) -> None:
    """Extract `archive.inner` of the zip (less `exclude`) into a temporary folder, then rename it to `target`."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    prefix = f"{archive.inner.strip('/')}/" if archive.inner else ""
    try:
        with zipfile.ZipFile(path) as zipped:
            members = [m for m in zipped.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
            if not members:
                raise DownloadError(f"{path} has no folder '{archive.inner}': the archive is not the expected one.")
            for member in members:
                relative = PurePosixPath(member.filename[len(prefix) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise DownloadError(f"{path} holds an unsafe path '{member.filename}'; refusing to extract it.")
                if relative.parts[0] in archive.exclude:
                    continue
                destination = staging.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
