"""Archives downloaded on first use, against a real HTTP server on this machine: success, a corrupt archive, a cut
transfer resumed with a Range request, two preparers at once, and no route to the data."""

import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from hashlib import sha256
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import preloaded
import pytest
from conftest import ROOT
from PIL import Image

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.download import Archive, DownloadError, fetch_archive

INNER = "Plant_leave_diseases_dataset_without_augmentation"
CLASSES = ("Apple___Apple_scab", "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot", "Grape___Esca, Black_Measles")


def make_zip() -> bytes:
    """PlantVillage's layout in small: an inner folder, class names with spaces and commas, a background class."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name in (*CLASSES, "Background_without_leaves"):
            for i in range(4):
                jpeg = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
                zipped.writestr(f"{INNER}/{name}/image ({i}).JPG", jpeg.getvalue())
    return buffer.getvalue()


class Server:
    """Serves `files` ({path: bytes}) with Range support; `cut` paths send half their bytes on the first request."""

    def __init__(self, files: dict[str, bytes], cut: tuple[str, ...] = ()) -> None:
        self.files, self.cut, self.requests = files, set(cut), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in owner.cut:
                    owner.cut.discard(self.path)
                    self.wfile.write(body[start : len(body) // 2])  # then the connection drops
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def full_downloads(self, path: str) -> int:
        return sum(1 for p, rng in self.requests if p == path and rng is None)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return make_zip()


def archive_for(urls: list[str], payload: bytes) -> Archive:
    return Archive(
        name="leaves-v1",
        filename="leaves.zip",
        urls=urls,
        size=len(payload),
        sha256=sha256(payload).hexdigest(),
        inner=INNER,
        exclude=["Background_without_leaves"],
    )


def test_first_use_downloads_verifies_and_extracts_then_trains_from_it(payload: bytes, tmp_path: Path):
    server = Server({"/leaves.zip": payload})
    archive = archive_for([f"{server.url}/missing.zip", f"{server.url}/leaves.zip"], payload)  # in order
    dm = ImageFolderDataModule(archive=archive, cache_dir=tmp_path)
    dm.prepare_data()
    assert dm.root == tmp_path / "datasets" / "leaves-v1" and dm.class_names == sorted(CLASSES)
    assert sum(dm.class_counts("train") + dm.class_counts("val") + dm.class_counts("test")) == 12
    assert (tmp_path / "downloads" / "leaves.zip").read_bytes() == payload
    dm.prepare_data()  # prepared: nothing fetched again
    assert server.full_downloads("/leaves.zip") == 1
    local = ImageFolderDataModule(root=dm.root, archive=archive, cache_dir=tmp_path / "other")
    local.prepare_data()  # an explicit data.root wins: nothing is downloaded
    assert not (tmp_path / "other").exists()


def test_a_corrupt_archive_is_refused_and_leaves_nothing_that_looks_ready(payload: bytes, tmp_path: Path):
    damaged = payload[:-100] + bytes(100)
    server = Server({"/leaves.zip": damaged})
    with pytest.raises(DownloadError, match=r"not the published file.*sha256sum"):
        fetch_archive(archive_for([f"{server.url}/leaves.zip"], payload), tmp_path, progress=False)
    datasets = tmp_path / "datasets"
    assert not (datasets / "leaves-v1").exists() and not list(datasets.glob(".leaves-v1-*"))  # no half extraction
    assert not list((tmp_path / "downloads").iterdir())  # the bad bytes are not kept to be trusted later


def test_a_cut_transfer_resumes_with_a_range_request(payload: bytes, tmp_path: Path):
    server = Server({"/leaves.zip": payload}, cut=("/leaves.zip",))
    target = fetch_archive(archive_for([f"{server.url}/leaves.zip"], payload), tmp_path, progress=False)
    assert sorted(p.name for p in target.iterdir()) == sorted(CLASSES)
    assert server.requests == [("/leaves.zip", None), ("/leaves.zip", f"bytes={len(payload) // 2}-")]


def test_two_preparers_at_once_download_and_extract_once(payload: bytes, tmp_path: Path):
    server = Server({"/leaves.zip": payload})
    archive = archive_for([f"{server.url}/leaves.zip"], payload)
    results, errors = [], []

    def prepare() -> None:
        try:
            results.append(fetch_archive(archive, tmp_path, progress=False))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert server.full_downloads("/leaves.zip") == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plants_without_data_or_network_fails_fast_in_one_message(tmp_path: Path):
    """The card's command as typed, where the archive cannot be reached (a closed local port stands in for the
    internet, which tests never use): exit 2 within a minute, one message, no traceback."""
    url = f"http://127.0.0.1:{closed_port()}/Plant_leaf_diseases_dataset_without_augmentation.zip"
    command = [
        sys.executable,
        "train.py",
        "backbone=efficientnet_b4",
        "data=plants",
        f"data.archive.urls=[{url}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"TL_LIGHTNING_CACHE": str(tmp_path)}
    done = preloaded.run(command, cwd=ROOT, timeout=120, env=env)
    assert time.perf_counter() - started < 60
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    message = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(message) == 1, done.stderr[-2000:]
    for fact in (
        url,
        "868,032,562 bytes",
        "ac3432453984d02a86197987e775a5429d0d59e7cc7c35bcf5a8f50349b90ff0",
        "data.root=",
        INNER,
        "Background_without_leaves",
    ):
        assert fact in message[0]


def test_the_package_imports_where_fcntl_does_not_exist():
    """Windows has no `fcntl`: importing the package, its data module and the download code must not need it."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import tl_lightning\n"
        "from tl_lightning.data.download import fetch_archive\n"
        "from tl_lightning.data.datamodule import ImageFolderDataModule\n"
        "from tl_lightning import TransferClassifier\n"
        "print('imported')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
