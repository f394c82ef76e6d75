"""The linear probe's cross-validation with and without `RowSpace`, side by side on the same features.

The recipe and the probe floor choose the probe's C by stratified 5-fold cross-validation of a logistic regression
on standardised pooled features (`finetuning.measure.cross_validate_probe`). Fitted in the span of the training
rows (`models.features.RowSpace`) the solution is the same; this measures what that saves, on each suite set's
training features (EfficientNet-Lite0, average + max pooling, the whole image at 224 px), and how far the two
fits' chosen C and cross-validated accuracy agree. Results go to `results/probe_fit.json`; `report.py` renders them.

    python benchmarks/probe_fit.py [--datasets deep-sky clipart ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine, save_json
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from suite import DEFAULT_ROOT, SUITE, write

import tl_lightning.finetuning.measure as measure
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.recipe import CONCAT_POOL
from tl_lightning.models.backbones import create_backbone
from tl_lightning.models.features import RowSpace, extract_features

ARCH, WEIGHTS = "tf_efficientnet_lite0", "package:efficientnet_lite0"


def search(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """The recipe's C search (`measure.cross_validate_probe`'s `LogisticRegressionCV`, same Cs, folds and scoring)
    on `x`: (seconds, chosen C, its mean fold accuracy)."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    cv = LogisticRegressionCV(Cs=list(measure.PROBE_CS), cv=folds, scoring="neg_log_loss", max_iter=2000)
    started = time.perf_counter()
    cv.fit(x, y)
    seconds = time.perf_counter() - started
    c = float(np.atleast_1d(cv.C_)[0])
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x[a], y[a]).score(x[b], y[b]) for a, b in folds.split(x, y)]
    return seconds, c, float(np.mean(fits))


def measure_set(folder: Path) -> dict:
    backbone = create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS, global_pool=CONCAT_POOL)
    config = measure.whole_image(backbone.data_config, 224)
    data = ImageFolderDataModule(folder, num_workers=0, audit=False, data_config=config)
    data.setup("fit")
    features, labels = extract_features(backbone.model.eval(), data.eval_dataloader("train"))
    x, y = StandardScaler().fit_transform(features.numpy()), labels.numpy()
    every = search(x, y)
    span = search(RowSpace().fit_transform(x), y)
    row = {"images": len(y), "features": x.shape[1]}
    for name, (seconds, c, accuracy) in (("every_feature", every), ("row_space", span)):
        row[name] = {"seconds": round(seconds, 2), "c": c, "accuracy": accuracy}
    print(f"{folder.name:<14} {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {name: measure_set(write(name, args.data_root)) for name in args.datasets}
    save_json("probe_fit", {"machine": machine(), "backbone": ARCH, "table": table})


if __name__ == "__main__":
    main()
