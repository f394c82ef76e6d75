"""The default against itself with one piece changed, on the real-data suite: what each piece of the recipe is worth.

Each step is `python train.py data=folder data.root=DIR seed=S` plus that step's overrides (a subprocess per run,
as a user runs it, scoring the test split as it trains like `peers.py`'s "ours"): the pieces issue 22 changed, put
back one at a time (selection on accuracy, C fixed at 1, the geometric spread of backbone LRs), the other pieces
of fastai's `fine_tune` the default does not take (BatchNorm statistics that adapt, with or without a BatchNorm
head, with either spread; one frozen epoch instead of five), a backbone LR ten times the gentle one, and the
pooling before fastai's average and maximum side by side became the default (average alone). Each
(step, dataset, seed) is a row of `benchmarks/results/recipe_path_runs.json`, kept across sessions;
`recipe_path.json` has the tables that `report.py` writes into BENCHMARKS.md.

    python benchmarks/recipe_path.py [--steps default adapt-bn ...] [--datasets clipart galaxies] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
import yaml
from _results import RESULTS, machine, save_json, save_row
from peers import paired, run_ours
from suite import DEFAULT_ROOT, SUITE, write

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = "model.score_accuracy_from=0"
# The epoch at which the default (`finetuning=lp_ft`) unfreezes the backbone, read from the config it runs.
UNFREEZE_EPOCH = int(yaml.safe_load((ROOT / "conf" / "finetuning" / "lp_ft.yaml").read_text())["unfreeze_epoch"])
# The backbone's LRs spread geometrically up to the head's: the recipe's choice for every set before the flat body
# became the gentle one. The steps measured before then carry it, so each still reproduces what it measured.
GEOMETRIC = "model.lr_spread=geometric"
# The last feature map pooled by average alone: the weights' own pooling, and the default's until average and max
# side by side (`model.pool=auto`) replaced it. Every step measured before then carries it.
AVERAGE = "model.pool=avg"
# fastai's `fine_tune` at its defaults, rebuilt on this library's objects (conf/experiment/fastai.yaml): the steps
# named fastai-* change one piece of it toward the default.
FASTAI = "experiment=fastai"
FASTAI_MILESTONES = yaml.safe_load((ROOT / "conf" / "experiment" / "fastai.yaml").read_text())["callbacks"][
    "finetuning"
]["milestones"]
# name -> (what changes, overrides on top of the default config). The steps after "accuracy-selection" change one
# piece each from it: they were measured before selection moved to the loss on small validation splits.
STEPS: dict[str, tuple[str, list[str]]] = {
    "accuracy-selection": (
        "checkpoints chosen on validation accuracy (ties by loss) whatever the split's size, as before issue 22, "
        "and the backbone's LRs spread geometrically",
        [ACCURACY, GEOMETRIC, AVERAGE],
    ),
    "probe-c1": (
        "+ the probe's C fixed at 1 (before issue 22) instead of cross-validated",
        [ACCURACY, GEOMETRIC, "callbacks.probe_floor.c=1.0", AVERAGE],
    ),
    "adapt-bn": (
        "+ BatchNorm statistics adapt once unfrozen (fastai's train-mode BatchNorm, AdaBN)",
        [ACCURACY, GEOMETRIC, "callbacks.finetuning.update_bn_stats=true", AVERAGE],
    ),
    "adapt-bn-head": (
        "+ and a BatchNorm1d head started from the probe, so the head re-standardises shifting features",
        [ACCURACY, GEOMETRIC, "callbacks.finetuning.update_bn_stats=true", "model.head_norm=true", AVERAGE],
    ),
    "geometric-body": (
        "the backbone's LRs spread geometrically from head LR / 100 up to the head's (the top block at head LR / 1.8) "
        "where the features fit, instead of the whole backbone at head LR / 100 (fastai's `fine_tune`)",
        [GEOMETRIC, AVERAGE],
    ),
    "early-stop-overall": (
        "early stopping's patience counted from the best score of the whole run, frozen phase included, instead of "
        "from the best since the last unfreeze",
        [GEOMETRIC, AVERAGE, "callbacks.early_stopping.restart_at_unfreeze=false"],
    ),
    "flips-always": (
        "half the training images flipped on every set (`hflip=0.5`, fixed before the flip rule) instead of "
        "where the mirror tests allow it",
        ["data.train_transform.hflip=0.5", AVERAGE],
    ),
    "unfreeze-early": (
        "the backbone unfrozen after one frozen epoch instead of five (fastai's `fine_tune`: one frozen epoch; LP-FT "
        "goes from the converged probe straight to fine-tuning), so it trains at the schedule's highest LRs",
        ["callbacks.finetuning.unfreeze_epoch=1", AVERAGE],
    ),
    "adapt-bn-flat": (
        "BatchNorm statistics adapt once unfrozen (fastai's train-mode BatchNorm, AdaBN), with the default's flat "
        "body (`adapt-bn` above ran with the geometric spread)",
        ["callbacks.finetuning.update_bn_stats=true", AVERAGE],
    ),
    "bolder-body": (
        "the whole backbone at head LR / 10 instead of / 100 where the features fit, so it moves ten times as far",
        ["model.lr_mult=10", AVERAGE],
    ),
    "average-pool": (
        "the last feature map pooled by average alone (the weights' own pooling, the default until this step) "
        "instead of by average and maximum side by side, so the probe and the head read half as many features",
        [AVERAGE],
    ),
    "fastai": (
        "fastai's `fine_tune` rebuilt on this library (`experiment=fastai`): `Resize(224)`'s crops, `aug_transforms`, "
        "`create_head`, train-mode BatchNorm while frozen, one frozen epoch then one-cycle with `slice(lr / 100, lr)`, "
        "fastai's Adam, batch 64, the last epoch's model",
        [FASTAI],
    ),
    "fastai-fixed-bn": (
        "the fastai preset with BatchNorm statistics held at the weights' own (eval mode) all run, affine trainable",
        [FASTAI, "callbacks.finetuning.update_bn_stats=false"],
    ),
    "fastai-linear-head": (
        "the fastai preset with a linear head on the pooled features instead of `create_head`'s two BatchNorm layers, "
        "dropout and hidden layer",
        [FASTAI, "model.head_hidden=[]", "model.head_dropout=0.0", "model.head_norm=false"],
    ),
    "fastai-whole-image": (
        "the fastai preset with the whole image squashed to the square (eval) and random crops of 75-100% of it "
        "(train), ours' views of large images, instead of `Resize(224)`'s square crops",
        [
            FASTAI,
            "model.crop_mode=squash",
            "data.train_transform.crop_mode=random_resized",
            "data.train_transform.crop_scale=[0.75,1.0]",
        ],
    ),
    "default": (
        "the default (`python train.py data=folder`, no flags): under 100 validation images the loss of each model "
        "as the run would calibrate it selects, and the probe stays unless fine-tuning beats it in both that loss "
        "and accuracy",
        [],
    ),
}


def run(step: str, folder: Path, seed: int, epochs: int, work: Path) -> dict:
    return run_ours(folder, seed, epochs, work, *STEPS[step][1]) | {"threads": torch.get_num_threads()}


def unfreeze_epoch(step: str) -> int:
    """The epoch at which `step`'s runs unfreeze the backbone: its override, or the default's."""
    prefix = "callbacks.finetuning.unfreeze_epoch="
    if FASTAI in STEPS[step][1]:  # the preset's own milestone
        return min(FASTAI_MILESTONES)
    return next((int(o.removeprefix(prefix)) for o in STEPS[step][1] if o.startswith(prefix)), UNFREEZE_EPOCH)


def around_unfreeze(curves: list[list[list[float]]], epoch: int) -> dict:
    """Mean test accuracy over the seeds at the last frozen epoch, at the first unfrozen one and at the lowest
    unfrozen one (how far the backbone's first steps knock the model back), and of the kept model, for runs that
    unfreeze at `epoch`. A curve (`peers.run_ours`) starts with the probe head, has one point per epoch and ends
    with the kept model's."""
    return {
        "frozen": statistics.mean(c[epoch][1] for c in curves),
        "first": statistics.mean(c[epoch + 1][1] for c in curves),
        "lowest": statistics.mean(min(acc for _, acc in c[epoch + 1 : -1]) for c in curves),
        "kept": statistics.mean(c[-1][1] for c in curves),
        "seeds": len(curves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--datasets", nargs="+", default=["clipart", "galaxies"], choices=list(SUITE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--report-only", action="store_true", help="run nothing: rebuild the table from the rows")
    parser.add_argument("--rerun", nargs="+", default=[], choices=list(STEPS), help="forget these steps' rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs_file = RESULTS / "recipe_path_runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    if args.rerun:  # forgotten on disk too: rows are merged into the file as they finish
        runs = {key: row for key, row in runs.items() if key.split("/")[0] not in args.rerun}
        save_json("recipe_path_runs", runs)
    peers_file = RESULTS / "peers_runs.json"
    peers = json.loads(peers_file.read_text()) if peers_file.exists() else {}
    for key, row in peers.items():  # the default is the same command as peers.py's "ours": its rows count for both
        name, tool, seed = key.split("/")
        if tool == "ours":
            runs[f"default/{name}/{seed}"] = row
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.report_only else args.datasets:
            folder = write(name, args.data_root)
            for step in args.steps:
                for seed in args.seeds:
                    key = f"{step}/{name}/{seed}"
                    if key not in runs:
                        row = run(step, folder, seed, args.epochs, Path(tmp) / key.replace("/", "_"))
                        runs = save_row("recipe_path_runs", key, row)
                    print(f"{key:<28} acc {runs[key]['acc']:.4f}  {runs[key]['seconds']:>6.1f} s", flush=True)
    rows: dict[tuple[str, str], list[dict]] = {}  # (step, dataset) -> its seeds' rows, grouped once
    for key, row in sorted(runs.items()):
        step, name, _ = key.split("/")
        rows.setdefault((step, name), []).append(row)
    measured = [name for name in SUITE if any(name == n for _, n in rows)]
    table = {
        step: {name: statistics.mean(r["acc"] for r in rows[step, name]) for name in measured if (step, name) in rows}
        for step in STEPS
    }
    unfreeze = {}
    for step in STEPS:
        for name in measured:
            if curves := [r["curve"] for r in rows.get((step, name), []) if r.get("curve")]:
                unfreeze.setdefault(step, {})[name] = around_unfreeze(curves, unfreeze_epoch(step))
    about = {step: text for step, (text, _) in STEPS.items()}
    result = {"machine": machine(), "epochs": args.epochs, "steps": about, "table": table, "unfreeze": unfreeze}
    result["reproduction"] = reproduction(runs, peers)
    save_json("recipe_path", result)


def reproduction(runs: dict, peers: dict) -> dict:
    """The fastai preset (step "fastai") against fastai itself (`peers.py`'s rows), seed by seed where both ran:
    `{dataset: {"seeds": {seed: [preset, fastai]}, "preset": mean, "fastai": mean, "paired": paired difference}}`."""
    found: dict = {}
    for key, row in sorted(runs.items()):
        step, name, seed = key.split("/")
        if step == "fastai" and (theirs := peers.get(f"{name}/fastai/{seed}")) is not None:
            found.setdefault(name, {})[seed] = (row, theirs)
    table = {}
    for name, pairs in found.items():
        ours, theirs = [p[0] for p in pairs.values()], [p[1] for p in pairs.values()]
        table[name] = {
            "seeds": {seed: [a["acc"], b["acc"]] for seed, (a, b) in pairs.items()},
            "preset": statistics.mean(r["acc"] for r in ours),
            "fastai": statistics.mean(r["acc"] for r in theirs),
            # Rows from before `right` was recorded have none: no paired difference for them.
            "paired": paired([r["right"] for r in ours], [r["right"] for r in theirs])
            if all("right" in r for r in [*ours, *theirs])
            else None,
        }
    return table


if __name__ == "__main__":
    main()
