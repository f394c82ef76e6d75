"""Frozen-phase epoch time with and without FrozenFeatureCache, on the digits default.

The frozen phase of the default recipe: EfficientNet-Lite0 (shipped ImageNet weights) at 64 px, the head
training on 500 digits and validating on 297, the backbone frozen with BatchNorm statistics fixed. The
training transform is the deterministic one (augment=none), where caching is exact. Each run trains
`--epochs` frozen epochs; an epoch's time runs from its training start to the end of its validation. Runs
alternate (plain, cached, plain, ...) and the medians are compared; the cache's one-off extraction is reported
beside them, and so is the whole phase (extraction included).

    python benchmarks/feature_cache.py [--epochs 5] [--repeats 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from _results import RESULTS, machine, save_json

from tl_lightning.data.digits import DigitsDataModule
from tl_lightning.data.transforms import eval_transform
from tl_lightning.finetuning.feature_cache import FrozenFeatureCache
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.module import TransferClassifier


class EpochClock(pl.Callback):
    def __init__(self) -> None:
        self.started: float | None = None
        self.epochs: list[float] = []

    def on_train_epoch_start(self, *args) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer, *args) -> None:
        if not trainer.sanity_checking and self.started is not None:
            self.epochs.append(time.perf_counter() - self.started)


def frozen_phase(cached: bool, epochs: int, cache_dir: str) -> dict:
    pl.seed_everything(0)
    data = DigitsDataModule(cache_dir=cache_dir, batch_size=32, num_workers=0, train_transform=eval_transform)
    data.prepare_data()
    model = TransferClassifier(
        "tf_efficientnet_lite0",
        num_classes=10,
        class_names=data.class_names,
        weights_file="package:efficientnet_lite0",
        image_size=64,
        crop_pct=1.0,
    )
    data.data_config = dict(model.data_config)
    clock, schedule = EpochClock(), LayerFinetuning(milestones={})
    cache = FrozenFeatureCache(schedule)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[schedule, clock, *([cache] if cached else [])],
    )
    started = time.perf_counter()
    trainer.fit(model, data)
    return {
        "fit_seconds": time.perf_counter() - started,
        "epoch_seconds": clock.epochs,
        "extract_seconds": cache.extract_seconds if cached else 0.0,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cache_dir = os.environ.get("TL_LIGHTNING_CACHE", tempfile.mkdtemp())
    runs: dict[str, list[dict]] = {"plain": [], "cached": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(frozen_phase(name == "cached", args.epochs, cache_dir))
    epoch = {name: statistics.median(t for r in rs for t in r["epoch_seconds"]) for name, rs in runs.items()}
    phase = {
        name: statistics.median(sum(r["epoch_seconds"]) + r["extract_seconds"] for r in rs) for name, rs in runs.items()
    }
    result = {
        "machine": machine(),
        "setup": f"tf_efficientnet_lite0 @64px, digits 500 train / 297 val, batch 32, {args.epochs} frozen epochs",
        "epoch_seconds": epoch,
        "epoch_speedup": epoch["plain"] / epoch["cached"],
        "extract_seconds": statistics.median(r["extract_seconds"] for r in runs["cached"]),
        "phase_seconds": phase,
        "phase_speedup": phase["plain"] / phase["cached"],
        "val_acc": {name: [r["val_acc"] for r in rs] for name, rs in runs.items()},
    }
    path = save_json("feature_cache", result, args.out)
    print(
        f"frozen epoch: {epoch['plain']:.2f} s plain vs {epoch['cached']:.3f} s cached = "
        f"{result['epoch_speedup']:.1f}x; extraction {result['extract_seconds']:.2f} s once"
    )
    print(
        f"{args.epochs}-epoch frozen phase incl. extraction: {phase['plain']:.1f} s vs {phase['cached']:.1f} s = "
        f"{result['phase_speedup']:.1f}x; val acc plain {result['val_acc']['plain']} cached "
        f"{result['val_acc']['cached']}\n-> {path}"
    )


if __name__ == "__main__":
    main()
