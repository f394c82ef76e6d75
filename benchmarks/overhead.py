"""Training-step time of TransferClassifier under the Lightning Trainer vs a hand-written PyTorch loop.

Both train the same model (same initial weights, every group unfrozen, BatchNorm statistics held fixed) on the
same in-memory batches with the same optimizer, param groups, schedule and gradient clipping; the hand-written
loop is what a user would write instead. Runs alternate (Lightning, loop, Lightning, ...) so machine noise hits
both alike; the figure is the median per-step time after warm-up steps, data fetch included.

    python benchmarks/overhead.py [--steps 40] [--repeats 3] [--image-size 64] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from _results import RESULTS, machine, save_json
from torch.utils.data import DataLoader, TensorDataset

from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.groups import build_param_groups, discriminative_lrs
from tl_lightning.models.lr_schedules import warmup_cosine
from tl_lightning.models.module import TransferClassifier

WARMUP_STEPS = 5


def make_model(backbone: str, image_size: int) -> TransferClassifier:
    torch.manual_seed(0)
    return TransferClassifier(backbone, num_classes=10, pretrained=False, image_size=image_size)


def make_loader(steps: int, batch_size: int, image_size: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, 3, image_size, image_size, generator=generator)
    y = torch.randint(0, 10, (steps * batch_size,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class StepClock(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def lightning_steps(backbone: str, loader: DataLoader, image_size: int) -> list[float]:
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[LayerFinetuning(milestones={0: "all"}), clock],
    )
    trainer.fit(make_model(backbone, image_size), train_dataloaders=loader)
    return _per_step(clock.stamps)


def plain_steps(backbone: str, loader: DataLoader, image_size: int) -> list[float]:
    model = make_model(backbone, image_size).train()
    for module in model.modules():  # the same BatchNorm policy as LayerFinetuning's default: statistics fixed
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    groups = model.layer_groups()
    optimizer = torch.optim.AdamW(build_param_groups(groups, discriminative_lrs(len(groups), 1e-3, 10.0)))
    scheduler = warmup_cosine(optimizer, total_steps=len(loader))
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    stamps = []
    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        stamps.append(time.perf_counter())
    return _per_step(stamps)


def _per_step(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps[WARMUP_STEPS:], stamps[WARMUP_STEPS + 1 :], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    loader = make_loader(args.steps, args.batch_size, args.image_size)
    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for _ in range(args.repeats):
        times["lightning"] += lightning_steps(args.backbone, loader, args.image_size)
        times["plain"] += plain_steps(args.backbone, loader, args.image_size)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "training-step overhead",
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps_timed": {k: len(v) for k, v in times.items()},
        "median_step_ms": {k: round(v * 1e3, 2) for k, v in medians.items()},
        "ratio_lightning_over_plain": round(medians["lightning"] / medians["plain"], 3),
        "machine": machine(),
    }
    save_json("overhead", result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
