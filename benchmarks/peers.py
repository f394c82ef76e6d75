"""Ours with no flags vs the tools a user would pick instead, each at its own documented defaults, on the suite of
small real datasets (`suite.py`).

Every tool gets the same EfficientNet-Lite0 ImageNet weights (the offline package), the same train/val/test
folders and the same epoch budget; everything else is the tool's own:

- **ours**: `python train.py data=folder data.root=DIR seed=S`, nothing else (a subprocess per run), with the
  benchmark's `_clock.TestClock` scoring the test split as it trains, off the clock, so the time it first reaches
  a peer's accuracy is measured, not only where it ends;
- **fastai**: its docs' recipe: `ImageDataLoaders.from_folder(..., item_tfms=Resize(224),
  batch_tfms=aug_transforms())` (batch 64), `vision_learner(dls, "tf_efficientnet_lite0")`,
  `fine_tune(epochs - 1)` (1 frozen epoch, then the rest); timm's loader is pointed at the offline weights file;
- **lightning-docs**: the Lightning docs recipe at 224 px: a LightningModule with backbone + linear head, `Adam`
  over `filter(requires_grad)` at 1e-3, `BackboneFinetuning` (its defaults: unfreeze at epoch 10), the docs
  example's transforms (resize, horizontal flip, ImageNet mean/std); the last epoch's model is scored;
- **probe**: logistic regression (scikit-learn, standardised) on the frozen backbone's pooled features of the
  whole image at 224 px, C chosen by 5-fold cross-validation on the training images (`LogisticRegressionCV`);
- **svm**: scikit-learn's `SVC()` (RBF) on the raw pixels, scaled to [0, 1], at the images' own size (64 px when
  the sizes differ).

Each (dataset, tool, seed) is one row of `benchmarks/results/peers_runs.json`, saved as it finishes: a stopped
run goes on where it was, and rows from earlier sessions are kept. `peers.json` holds the table, mean ± std over
the seeds that finished, with the fit time; `report.py` puts it in BENCHMARKS.md.

    pip install -e ".[peers]"
    python benchmarks/peers.py [--datasets galaxies clipart ...] [--tools ours fastai ...] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from _results import RESULTS, machine, save_json, save_row, train_default
from PIL import Image
from report import peers as render_peers
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from suite import DEFAULT_ROOT, SUITE, counts, write

ROOT = Path(__file__).resolve().parents[1]
ARCH, WEIGHTS = "tf_efficientnet_lite0", "package:efficientnet_lite0"
TOOLS = ("ours", "fastai", "lightning-docs", "probe", "svm")
# The resolution fastai's and Lightning's docs train at, and the probe's.
PEER_SIZE = 224
SVM_SIZE = 64


def files(folder: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    paths = sorted((folder / split).rglob("*.png"))
    return paths, [classes.index(p.parent.name) for p in paths], classes


def right(folder: Path, correct: dict[Path, bool]) -> str:
    """Which test images a tool got right, as one '0'/'1' per image in `files(folder, "test")` order: two tools'
    strings compare image by image (`paired`)."""
    found = {path.resolve(): ok for path, ok in correct.items()}
    return "".join("1" if found[path.resolve()] else "0" for path in files(folder, "test")[0])


def paired(ours: list[str], peer: list[str]) -> dict:
    """Ours' accuracy minus a peer's on the same test images, with the standard error of that difference: each
    image's share of ours' seeds that got it right minus the peer's share (with one seed each, McNemar's
    sqrt(b + c) / n up to the n - 1). Two accuracies on a few hundred images each move by about 3 points; the images
    both get right or both get wrong say nothing about which tool is better, and the paired error leaves them out."""

    def share(runs: list[str]) -> np.ndarray:  # per image: the share of the runs that got it right
        return np.array([[c == "1" for c in run] for run in runs]).mean(axis=0)

    difference = share(ours) - share(peer)
    n = len(difference)
    return {
        "difference": float(difference.mean()),
        "stderr": float(difference.std(ddof=1)) / n**0.5 if n > 1 else 0.0,
        "seeds": [len(ours), len(peer)],
    }


def run_ours(folder: Path, seed: int, epochs: int, work: Path, *overrides: str) -> dict:
    """The default run (with `overrides`), with `_clock.TestClock` scoring the test split as it trains (off the
    clock): `curve` holds (seconds since the run started measuring the data, test accuracy), ending at the kept
    model's."""
    out = work / "ours"
    clock = ["+callbacks.test_clock._target_=_clock.TestClock", f"+callbacks.test_clock.path={work / 'clock.json'}"]
    metrics = train_default(folder, seed, epochs, out, *clock, *overrides)
    config = yaml.safe_load((out / "config.yaml").read_text())
    log = (out / "train.log").read_text()
    recipe = [line.split("recipe: ", 1)[1] for line in log.splitlines() if "recipe: " in line]
    clock = json.loads((work / "clock.json").read_text())
    measuring, seconds = metrics.get("recipe_seconds", 0.0), round(metrics["seconds"] - clock["off_clock"], 1)
    curve = [[round(measuring + elapsed, 1), acc] for elapsed, acc in clock["curve"]]
    predictions = csv.DictReader((out / "report" / "predictions.csv").read_text().splitlines())
    return {
        "acc": metrics["test/acc"],
        "right": right(folder, {Path(row["path"]): row["true"] == row["predicted"] for row in predictions}),
        "seconds": seconds,
        "curve": [*curve, [seconds, metrics["test/acc"]]],
        "size": config["model"]["image_size"],
        "selected": metrics.get("selected"),
        "probe_val": metrics.get("probe/acc"),
        "recipe": recipe,
    }


def offline_weights(work: Path) -> Path:
    """The packaged weights as a timm-named state dict, for tools that load through `timm.create_model`."""
    from tl_lightning.models.backbones import create_backbone

    path = work / "lite0_timm.pth"
    if not path.exists():
        torch.save(create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS).model.state_dict(), path)
    return path


def run_fastai(folder: Path, seed: int, epochs: int, work: Path) -> dict:
    import timm
    from fastai.vision import all as fv

    weights = offline_weights(work)
    create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):  # fastai calls timm.create_model(arch, pretrained=True)
        return create(name, pretrained=pretrained, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)

    fv.set_seed(seed, reproducible=True)
    dls = fv.ImageDataLoaders.from_folder(
        folder, train="train", valid="val", item_tfms=fv.Resize(PEER_SIZE), batch_tfms=fv.aug_transforms(), seed=seed
    )
    timm.create_model = offline_create
    try:
        learn = fv.vision_learner(dls, ARCH, metrics=fv.accuracy)
    finally:
        timm.create_model = create
    started = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs - 1)
    seconds = time.perf_counter() - started
    paths, labels, _ = files(folder, "test")
    preds, _ = learn.get_preds(dl=dls.test_dl(paths))
    correct = (preds.argmax(1) == torch.tensor(labels)).tolist()
    return {
        "acc": sum(correct) / len(correct),
        "right": right(folder, dict(zip(paths, correct, strict=True))),
        "seconds": round(seconds, 1),
    }


def run_lightning_docs(folder: Path, seed: int, epochs: int, work: Path) -> dict:
    import lightning.pytorch as pl
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import BackboneFinetuning
    from torchvision import datasets, transforms

    from tl_lightning.models.backbones import create_backbone

    class DocsModel(pl.LightningModule):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            backbone = create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS)
            self.backbone, self.head = backbone.model, torch.nn.Linear(backbone.num_features, num_classes)

        def forward(self, x):
            return self.head(self.backbone(x))

        def training_step(self, batch, _):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()), lr=1e-3)

    pl.seed_everything(seed, workers=True)
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    size = PEER_SIZE
    train_tf = transforms.Compose(
        [transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), normalize])
    train = datasets.ImageFolder(folder / "train", train_tf)
    test = datasets.ImageFolder(folder / "test", eval_tf)
    model = DocsModel(len(train.classes))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[BackboneFinetuning()],
        logger=False,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(model, torch.utils.data.DataLoader(train, batch_size=32, shuffle=True))
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        correct = torch.cat([model(x).argmax(1) == y for x, y in torch.utils.data.DataLoader(test, 64)]).tolist()
    paths = [Path(path) for path, _ in test.samples]
    return {
        "acc": sum(correct) / len(correct),
        "right": right(folder, dict(zip(paths, correct, strict=True))),
        "seconds": round(seconds, 1),
    }


def run_probe(folder: Path, seed: int, epochs: int, work: Path) -> dict:
    from torchvision import transforms

    from tl_lightning.models.backbones import create_backbone

    backbone = create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS)
    model, config = backbone.model.eval(), backbone.data_config
    tf = transforms.Compose(
        [
            transforms.Resize((PEER_SIZE, PEER_SIZE)),
            transforms.ToTensor(),
            transforms.Normalize(config["mean"], config["std"]),
        ]
    )

    def features(split: str) -> tuple[np.ndarray, list[int]]:
        paths, labels, _ = files(folder, split)
        with torch.no_grad():
            batches = [
                torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i : i + 64]])
                for i in range(0, len(paths), 64)
            ]
            return torch.cat([model(b) for b in batches]).numpy(), labels

    started = time.perf_counter()
    x, y = features("train")
    cv = LogisticRegressionCV(Cs=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], cv=5, max_iter=2000)
    probe = make_pipeline(StandardScaler(), cv).fit(x, y)
    seconds = time.perf_counter() - started
    return scored(folder, probe, *features("test")) | {"seconds": round(seconds, 1)}


def run_svm(folder: Path, seed: int, epochs: int, work: Path) -> dict:
    sizes = {Image.open(p).size for split in ("train", "test") for p in files(folder, split)[0]}
    side = next(iter(sizes)) if len(sizes) == 1 else (SVM_SIZE, SVM_SIZE)

    def pixels(split: str) -> tuple[np.ndarray, list[int]]:
        paths, labels, _ = files(folder, split)
        images = [Image.open(p).convert("RGB").resize(side) for p in paths]
        return np.stack([np.asarray(image, np.float32).ravel() / 255 for image in images]), labels

    started = time.perf_counter()
    svm = SVC().fit(*pixels("train"))
    seconds = time.perf_counter() - started
    return scored(folder, svm, *pixels("test")) | {"seconds": round(seconds, 1)}


def scored(folder: Path, classifier, x: np.ndarray, y: list[int]) -> dict:
    """A fitted scikit-learn classifier's test accuracy and `right` on the test images (`x`, `y` in `files` order)."""
    correct = (classifier.predict(x) == np.array(y)).tolist()
    return {
        "acc": sum(correct) / len(correct),
        "right": right(folder, dict(zip(files(folder, "test")[0], correct, strict=True))),
    }


RUNNERS: dict[str, Callable[..., dict]] = {
    "ours": run_ours,
    "fastai": run_fastai,
    "lightning-docs": run_lightning_docs,
    "probe": run_probe,
    "svm": run_svm,
}


def summarise(runs: dict, datasets: list[str], tools: list[str]) -> dict:
    """`{dataset: {tool: mean, std, seeds, seconds}}` over the finished seeds."""
    table: dict = {}
    for name in datasets:
        row = table.setdefault(name, {})
        for tool in tools:
            done = [r for key, r in runs.items() if key.startswith(f"{name}/{tool}/")]
            if done:
                accs = [r["acc"] for r in done]
                row[tool] = {
                    "mean": statistics.mean(accs),
                    "std": statistics.pstdev(accs),
                    "seeds": len(accs),
                    "seconds": statistics.mean(r["seconds"] for r in done),
                    "threads": max(r.get("threads", 0) for r in done),
                }
        if "ours" in row and (reach := time_to_reach(runs, name, row)):
            row["ours"]["reach"] = reach
        if "ours" in row and (decision := probe_decision(runs, name)):
            row["ours"]["decision"] = decision
        ours = rights(runs, name, "ours")
        for tool in [t for t in tools if t != "ours" and t in row]:
            if ours and (peer := rights(runs, name, tool)):
                row[tool]["paired"] = paired(ours, peer)
    return table


def probe_decision(runs: dict, name: str) -> dict | None:
    """What the probe floor decided in ours' seeds on a data set, beside what the test split says of it: the model
    kept (how many seeds kept the probe) and its test accuracy, the probe's as it started the head (fitted on the
    training images) and the best test accuracy of any fine-tuned epoch (from `run_ours`' curve: an oracle that no
    validation split can reach, so the fine-tuned side's upper bound)."""
    rows = [r for key, r in runs.items() if key.startswith(f"{name}/ours/") and len(r.get("curve") or []) > 2]
    if not rows:
        return None
    return {
        "seeds": len(rows),
        "kept_probe": sum(r.get("selected") == "linear probe" for r in rows),
        "kept": statistics.mean(r["acc"] for r in rows),
        "probe": statistics.mean(r["curve"][0][1] for r in rows),
        "best_epoch": statistics.mean(max(acc for _, acc in r["curve"][1:-1]) for r in rows),
    }


def rights(runs: dict, name: str, tool: str) -> list[str]:
    """The `right` strings of a tool's seeds on a data set (rows from before they were recorded have none)."""
    return [run["right"] for key, run in sorted(runs.items()) if key.startswith(f"{name}/{tool}/") and "right" in run]


def resolutions(runs: dict) -> dict:
    """`{dataset: {"probe": {size: [cv accuracy, standard error]}, "chosen": size, "acc": test}}` from the recipe
    lines of ours' first seed, where the recipe measured sizes (small images)."""
    found = {}
    for key, run in sorted(runs.items()):
        name, tool, _ = key.split("/")
        if tool != "ours" or name in found:
            continue
        probes = {}
        for line in run.get("recipe", []):
            if measured := re.match(r"probe at (\d+) px: cross-validated accuracy ([\d.]+) \+- ([\d.]+)", line):
                probes[measured.group(1)] = [float(measured.group(2)), float(measured.group(3))]
        if len(probes) > 1:  # large images are not measured at several sizes
            found[name] = {"probe": probes, "chosen": run["size"], "acc": run["acc"]}
    return found


# The tools a user would fine-tune with instead: whose accuracy ours has to reach in half their time. The probe and
# the SVM are floors on accuracy (ours starts from the probe), not fine-tuning runs to race.
FINE_TUNERS = ("fastai", "lightning-docs")


def time_to_reach(runs: dict, name: str, row: dict) -> dict | None:
    """When ours' test curve (`run_ours`) first reaches the best fine-tuning peer's mean accuracy: the mean over
    ours' seeds that recorded a curve (a seed that never reaches it counts its whole run and is marked)."""
    peers = [tool for tool in FINE_TUNERS if tool in row]
    curves = [r["curve"] for key, r in runs.items() if key.startswith(f"{name}/ours/") and r.get("curve")]
    if not peers or not curves:
        return None
    peer = max(peers, key=lambda tool: row[tool]["mean"])
    target = row[peer]["mean"]
    reached = [next((seconds for seconds, acc in curve if acc >= target), None) for curve in curves]
    return {
        "peer": peer,
        "target": target,
        "peer_seconds": row[peer]["seconds"],
        "seconds": statistics.mean(
            t if t is not None else curve[-1][0] for t, curve in zip(reached, curves, strict=True)
        ),
        "reached": sum(t is not None for t in reached),
        "seeds": len(curves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for every tool (fit times compare only at the same count; each row records its own)",
    )
    parser.add_argument("--fresh", action="store_true", help="forget finished rows and run them again")
    parser.add_argument("--report-only", action="store_true", help="run nothing: rebuild the table from the rows")
    parser.add_argument(
        "--rerun", nargs="+", default=[], choices=TOOLS, help="forget these tools' rows (ours, after a recipe change)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Ours' runs import the benchmark's test clock (`_clock.py`) from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    runs_file = args.out / "peers_runs.json"
    runs = {} if args.fresh or not runs_file.exists() else json.loads(runs_file.read_text())
    if args.rerun or args.fresh:  # forgotten on disk too: rows are merged into the file as they finish
        runs = {key: run for key, run in runs.items() if key.split("/")[1] not in args.rerun}
        save_json("peers_runs", runs, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.report_only else args.datasets:
            folder = write(name, args.data_root)
            for seed in args.seeds:
                for tool in args.tools:
                    key = f"{name}/{tool}/{seed}"
                    if key in runs:
                        continue
                    work = Path(tmp) / key
                    work.mkdir(parents=True, exist_ok=True)
                    row = RUNNERS[tool](folder, seed, args.epochs, work) | {"threads": torch.get_num_threads()}
                    print(f"{key:<32} acc {row['acc']:.4f}  {row['seconds']:>6.1f} s", flush=True)
                    runs = save_row("peers_runs", key, row, args.out)
    # The table holds every finished row, from this call or an earlier one.
    measured = [name for name in SUITE if any(key.startswith(f"{name}/") for key in runs)]
    about = {name: SUITE[name][0] for name in measured}
    sizes = {name: counts(write(name, args.data_root)) for name in measured}
    result = {
        "machine": machine(),
        "epochs": args.epochs,
        "datasets": about,
        "images": sizes,
        "table": summarise(runs, measured, list(TOOLS)),
        "resolutions": resolutions(runs),
    }
    save_json("peers", result, args.out)
    print("\n".join(render_peers(result)))  # the section report.py writes into BENCHMARKS.md


if __name__ == "__main__":
    main()
