"""The data audit's time with and without its cache, on a folder of phone-photo-sized JPEGs.

The first audit decodes and hashes every file; with `audit_cache`, a later one only stats the files and reads
the cached results back. Runs alternate (uncached, cached, ...) with the cache warmed once beforehand; the
figure is the median wall time of scanning the folder (`ImageFolderDataModule.splits`).

    python benchmarks/audit.py [--images 1000] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _results import RESULTS, machine, save_json
from dataloader import write_jpegs

from tl_lightning.data.datamodule import ImageFolderDataModule


def scan_seconds(root: Path, cache: Path | None) -> float:
    started = time.perf_counter()
    _ = ImageFolderDataModule(root, audit_cache=cache).splits
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "images", Path(tmp) / "cache"
        write_jpegs(root, args.images)
        scan_seconds(root, cache)  # warm the cache
        times: dict[str, list[float]] = {"uncached": [], "cached": []}
        for _ in range(args.repeats):
            times["uncached"].append(scan_seconds(root, None))
            times["cached"].append(scan_seconds(root, cache))
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "benchmark": "data audit, folder scan",
        "images": args.images,
        "median_seconds": median,
        "speedup": median["uncached"] / median["cached"],
        "machine": machine(),
    }
    path = save_json("audit", result, args.out)
    print(
        f"audit of {args.images} JPEGs: {median['uncached']:.2f} s uncached vs {median['cached']:.3f} s cached = "
        f"{result['speedup']:.0f}x\n-> {path}"
    )


if __name__ == "__main__":
    main()
