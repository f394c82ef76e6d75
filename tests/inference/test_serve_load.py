"""The HTTP server under load, on loopback against the real server: thousands of requests from concurrent clients
end without a 5xx and without the server's memory growing; a full server answers 503 with Retry-After at once;
clients that drop mid-upload hold no place in it."""

import csv
import os
import signal
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import psutil
import pytest
from test_serve import call, multipart, serving

CLIENTS, REQUESTS = 8, 1000
RSS_GROWTH_MIB = 64  # the bound on the server's memory growth over the soak, after a warm-up


def tree_rss(pid: int) -> float:
    """MiB resident in the server and its worker processes."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


@pytest.mark.slow
def test_thousands_of_requests_from_concurrent_clients_get_no_5xx_and_memory_stays_flat(digits_run, tmp_path):
    out, _ = digits_run
    bodies = [multipart(path) for path in _test_images(out)[:32]]
    flags = ["--max-batch-size", "8", "--batch-timeout", "0.01", "--max-pending", "64"]
    with serving(out / "checkpoints" / "model.ckpt", tmp_path / "server.log", *flags) as (url, server):

        def post(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            status, _ = call(f"{url}/predict", *bodies[i % len(bodies)])
            return status, time.perf_counter() - started

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(post, range(100)))  # warm-up: allocators and caches settle
            before = tree_rss(server.pid)
            started = time.perf_counter()
            results = list(pool.map(post, range(REQUESTS)))
            seconds = time.perf_counter() - started
        after = tree_rss(server.pid)
    statuses = [status for status, _ in results]
    latencies = sorted(latency for _, latency in results)
    p95 = latencies[int(0.95 * len(latencies))]
    print(
        f"soak: {REQUESTS} requests, {CLIENTS} clients, {REQUESTS / seconds:.0f} req/s, p50 "
        f"{1000 * statistics.median(latencies):.0f} ms, p95 {1000 * p95:.0f} ms, RSS {before:.0f} -> {after:.0f} MiB"
    )
    assert statuses.count(200) == REQUESTS, {s: statuses.count(s) for s in set(statuses)}
    assert after - before < RSS_GROWTH_MIB


@pytest.mark.slow
def test_a_full_server_answers_503_with_retry_after_and_dropped_uploads_hold_no_place(digits_run, tmp_path):
    out, _ = digits_run
    body = multipart(_test_images(out)[0])
    # One request in flight at most; each waits 1 s for its batch to fill, so the others arrive while it waits.
    flags = ["--max-pending", "1", "--max-batch-size", "4", "--batch-timeout", "1.0"]
    with serving(out / "checkpoints" / "model.ckpt", tmp_path / "server.log", *flags) as (url, _):
        for _ in range(5):  # clients that send half an upload and hang up
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as raw:
                head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {body[1]}\r\n"
                raw.sendall(f"{head}Content-Length: {len(body[0])}\r\n\r\n".encode() + body[0][: len(body[0]) // 2])
        time.sleep(0.5)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _call_with_headers(f"{url}/predict", *body), range(3)))
        statuses = sorted(status for status, _ in answers)
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 503}, statuses
        assert 503 in statuses  # the second and third arrive while the first waits for its batch
        retry = [headers.get("Retry-After") for status, headers in answers if status == 503]
        assert all(value == "1" for value in retry)
        assert _call_with_headers(f"{url}/predict", *body)[0] == 200  # the dropped uploads left no place taken


def _call_with_headers(url: str, body: bytes, content_type: str) -> tuple[int, Message]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers  # looked up without regard to case, as HTTP headers are


def _test_images(out: Path) -> list[Path]:
    """The run's test images (its split.csv), spread over the classes."""
    with open(out / "split.csv") as rows:
        files = [Path(row["path"]) for row in csv.DictReader(rows) if row["split"] == "test"]
    return files[:: max(1, len(files) // 64)]


@pytest.mark.slow
def test_sigterm_to_the_server_alone_stops_its_workers_and_frees_the_port(digits_run, tmp_path):
    """`kill PID` (a supervisor, `docker stop`) reaches only the server's own process; its HTTP and inference
    processes must end with it, or they keep the port and the next start fails."""
    out, _ = digits_run
    with serving(out / "checkpoints" / "model.ckpt", tmp_path / "server.log") as (url, server):
        tree = psutil.Process(server.pid).children(recursive=True)
        assert tree  # LitServe's HTTP and inference processes
        os.kill(server.pid, signal.SIGTERM)  # the process alone, not its group
        server.wait(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, [process.cmdline() for process in alive]
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as again:  # free for the next start: bound as a server binds (uvicorn sets REUSEADDR,
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # which a listener still refuses)
            again.bind(("127.0.0.1", port))
            again.listen()
        assert "Traceback" not in (tmp_path / "server.log").read_text()
