"""The path from the recipe before issue 22 to the default, one piece at a time, on the real-data suite.

Each step is `python train.py data=folder data.root=DIR seed=S` plus that step's overrides (a subprocess per run,
as a user runs it). The steps rebuild the pieces of fastai's `fine_tune` that won on held-out data inside
tl_lightning (a body moved at head LR / 100, BatchNorm statistics that adapt, a BatchNorm head), then the measured
choices (resolution and the probe's C by cross-validation). Each (step, dataset, seed) is a row of
`benchmarks/results/recipe_path_runs.json`, kept across sessions; `recipe_path.json` has the table that
`report.py` writes into BENCHMARKS.md.

    python benchmarks/recipe_path.py [--steps before default ...] [--datasets clipart galaxies] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _results import RESULTS, machine, save_json
from suite import DEFAULT_ROOT, SUITE, write

ROOT = Path(__file__).resolve().parents[1]
FLAT_BODY = "model.lr_factors=[0.01,0.01,0.01,0.01,0.01,0.01,0.01,0.01,1]"  # Lite0's 8 groups, then the head
BEFORE = ["model.head_norm=false", "callbacks.finetuning.update_bn_stats=false", "callbacks.probe_floor.c=1.0",
          "model.regularization.label_smoothing=0.1", "callbacks.finetuning.unfreeze_epoch=5"]  # fmt: skip

# name -> (what changes, overrides on top of the default config). Cumulative from "before".
STEPS: dict[str, tuple[str, list[str]]] = {
    "before": ("the recipe before issue 22: probe head (C=1), BN statistics fixed, geometric LRs (lr_mult from the "
               "domain shift), unfreeze at epoch 5", BEFORE),
    "flat-body": ("+ the whole body at head LR / 100 (fastai's `slice(lr/100, lr)` over a timm body), unfreeze "
                  "after 1 epoch, no label smoothing",
                  [*BEFORE[:3], FLAT_BODY, "callbacks.finetuning.unfreeze_epoch=1",
                   "model.regularization.label_smoothing=0"]),
    "adapt-bn": ("+ BatchNorm statistics adapt once unfrozen (fastai, AdaBN)",
                 [*BEFORE[:2], FLAT_BODY, "callbacks.finetuning.unfreeze_epoch=1",
                  "model.regularization.label_smoothing=0", "callbacks.finetuning.update_bn_stats=true"]),
    "bn-head": ("+ a BatchNorm1d head started from the probe (fastai's head norm)",
                [FLAT_BODY, "callbacks.finetuning.unfreeze_epoch=1", "model.regularization.label_smoothing=0",
                 "callbacks.finetuning.update_bn_stats=true", "model.head_norm=true", "callbacks.probe_floor.c=1.0"]),
    "default": ("the default (`python train.py data=folder`, no flags)", []),
}  # fmt: skip


def run(step: str, folder: Path, seed: int, epochs: int, work: Path) -> dict:
    out = work / "run"
    command = [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={folder}", f"seed={seed}",
               f"trainer.max_epochs={epochs}", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false",
               *STEPS[step][1]]  # fmt: skip
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ | threads)
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"acc": metrics["test/acc"], "seconds": metrics["fit_seconds"], "selected": metrics.get("selected"),
            "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--datasets", nargs="+", default=["clipart", "galaxies"], choices=list(SUITE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--rerun", nargs="+", default=[], choices=list(STEPS), help="forget these steps' rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs_file = RESULTS / "recipe_path_runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    runs = {key: row for key, row in runs.items() if key.split("/")[0] not in args.rerun}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            folder = write(name, args.data_root)
            for step in args.steps:
                for seed in args.seeds:
                    key = f"{step}/{name}/{seed}"
                    if key not in runs:
                        runs[key] = run(step, folder, seed, args.epochs, Path(tmp) / key.replace("/", "_"))
                        save_json("recipe_path_runs", runs)
                    print(f"{key:<28} acc {runs[key]['acc']:.4f}  {runs[key]['seconds']:>6.1f} s", flush=True)
    table = {
        step: {
            name: statistics.mean(r["acc"] for k, r in runs.items() if k.startswith(f"{step}/{name}/"))
            for name in args.datasets
            if any(k.startswith(f"{step}/{name}/") for k in runs)
        }
        for step in STEPS
    }
    about = {step: text for step, (text, _) in STEPS.items()}
    save_json("recipe_path", {"machine": machine(), "epochs": args.epochs, "steps": about, "table": table})


if __name__ == "__main__":
    main()
