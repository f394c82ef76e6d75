"""Time to reach a test accuracy on the digits default: `python train.py` vs a plain PyTorch fine-tuning loop.

Ours is the default run (`run(cfg)` on the composed default config: LP-FT, BatchNorm statistics fixed,
discriminative LRs, warmup + cosine, early stopping). The plain loop is what a user would write by hand:
the same EfficientNet-Lite0 weights and new head, every layer trainable from the start, BatchNorm in train
mode, AdamW at one LR with a cosine schedule, label smoothing 0.1, the same loaders (same images, same
augmentation, batch 32) and the same number of epochs. After each epoch both are scored on the test split by
the same function, outside the clock; the clock counts training and validation time only.

    python benchmarks/time_to_accuracy.py [--target 0.98] [--epochs 15] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from _results import RESULTS, machine, save_json
from hydra import compose, initialize_config_dir

from tl_lightning.data.digits import DigitsDataModule
from tl_lightning.evaluation.calibration import collect_logits
from tl_lightning.models.module import TransferClassifier

ROOT = Path(__file__).resolve().parents[1]


def test_accuracy(model: torch.nn.Module, datamodule: DigitsDataModule) -> float:
    logits, targets = collect_logits(model, datamodule.eval_dataloader("test"))
    return float((logits.argmax(-1) == targets).float().mean())


class Clock(pl.Callback):
    """Training time per epoch (train + validation), with the test accuracy taken after it, off the clock."""

    def __init__(self, datamodule: DigitsDataModule) -> None:
        self.datamodule = datamodule
        self.elapsed, self.started = 0.0, 0.0
        self.curve: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.elapsed += time.perf_counter() - self.started
        self.curve.append((self.elapsed, test_accuracy(pl_module, self.datamodule)))


def ours(epochs: int, out: Path) -> list[tuple[float, float]]:
    from tl_lightning.app.train import prepare

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={out}",
                f"trainer.max_epochs={epochs}",
                "logger=none",
                "trainer.enable_progress_bar=false",
            ],
        )
    from hydra.utils import instantiate

    job = prepare(cfg)
    datamodule, model = job.datamodule, job.model
    clock = Clock(datamodule)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [clock]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    trainer.fit(model, datamodule=datamodule)
    return clock.curve


def plain(epochs: int, cache_dir: str) -> list[tuple[float, float]]:
    pl.seed_everything(42)
    datamodule = DigitsDataModule(cache_dir=cache_dir, batch_size=32, num_workers=0)
    model = TransferClassifier(
        "tf_efficientnet_lite0", num_classes=10, weights_file="package:efficientnet_lite0", image_size=64, crop_pct=1.0
    )
    datamodule.data_config = dict(model.data_config)
    datamodule.setup("fit")
    train, val = datamodule.train_dataloader(), datamodule.val_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    curve, elapsed = [], 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for x, y in train:
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            sum(float((model(x).argmax(-1) == y).sum()) for x, y in val)  # the validation a user would run
        elapsed += time.perf_counter() - started
        curve.append((elapsed, test_accuracy(model, datamodule)))
    return curve


def reached(curve: list[tuple[float, float]], target: float) -> dict:
    hits = [(i + 1, t) for i, (t, acc) in enumerate(curve) if acc >= target]
    epoch, seconds = hits[0] if hits else (None, None)
    return {
        "epochs": epoch,
        "seconds": seconds,
        "best_test_acc": max(a for _, a in curve),
        "final_test_acc": curve[-1][1],
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cache_dir = os.environ.get("TL_LIGHTNING_CACHE", tempfile.mkdtemp())
    with tempfile.TemporaryDirectory() as run_dir:
        results = {"ours": reached(ours(args.epochs, Path(run_dir)), args.target)}
    results["plain"] = reached(plain(args.epochs, cache_dir), args.target)
    result = {"machine": machine(), "target": args.target, "epochs": args.epochs} | results
    both = results["plain"]["epochs"] and results["ours"]["epochs"]
    ratio = results["plain"]["seconds"] / results["ours"]["seconds"] if both else None
    result["plain_over_ours"] = ratio  # None: one of them never reached the target
    path = save_json("time_to_accuracy", result, args.out)
    for name, r in results.items():
        when = f"{r['seconds']:.1f} s (epoch {r['epochs']})" if r["epochs"] else f"not within {args.epochs} epochs"
        print(
            f"{name:5s}: test acc >= {args.target} after {when}; best {r['best_test_acc']:.4f}, "
            f"final {r['final_test_acc']:.4f}"
        )
    print(f"plain / ours = {ratio:.2f}" if ratio else "plain / ours: not comparable (a target not reached)")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
