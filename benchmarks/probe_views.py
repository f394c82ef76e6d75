"""What the recipe's probe-level rules are worth on the suite: the eval view (the whole image squashed to the square
vs the weights' centre crop), the pooling (average alone, the weights' own, vs average and maximum side by side,
`model.pool`), refitting the kept probe on train + val, and how far choices no rule makes move the probe: the
resize's interpolation (the weights' bicubic, or the bilinear the peers' torchvision `Resize` uses), and BatchNorm
statistics re-estimated from the training images (AdaBN, Li et al. 2016) instead of the weights' ImageNet ones,
which is what train-mode BatchNorm (fastai's, Lightning's `BackboneFinetuning`) converges to on a frozen body.

For each suite set, the pretrained EfficientNet-Lite0 features of every split are extracted through the library's
own data module and eval transform (`ImageFolderDataModule`, `data.transforms.eval_transform`) at the resolution
the recipe uses for it (224 px: the resolution rule keeps the weights' size on every suite set), under each view.
A logistic probe (C by cross-validation on the training features, `finetuning.measure.cross_validate_probe`) is
fitted on the training split alone and on train + val, and scored on test. The cross-validated accuracy is what the
recipe sees; the test accuracy what it earns. The results go to `results/probe_views.json`; `report.py` renders them.

    python benchmarks/probe_views.py [--datasets galaxies clipart ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
from _results import RESULTS, machine, save_json
from suite import DEFAULT_ROOT, SUITE, write
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.measure import centre_crop, cross_validate_probe, whole_image
from tl_lightning.finetuning.recipe import CONCAT_POOL
from tl_lightning.models.backbones import create_backbone
from tl_lightning.models.features import extract_features, fit_probe

ARCH, WEIGHTS = "tf_efficientnet_lite0", "package:efficientnet_lite0"
# The resolution the default recipe runs each set at (its `model.image_size` in the peers benchmark's runs).
SIZES = {"galaxies": 224, "clipart": 224, "few-shot": 224, "clipart-tiny": 224, "digits": 224, "deep-sky": 224}


def data_statistics(model: nn.Module, loader: DataLoader) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are the training images' own (AdaBN): torch's `update_bn` resets
    them and re-estimates them as a cumulative average over one pass of `loader`; the weights stay as they are."""
    adapted = copy.deepcopy(model)
    update_bn(loader, adapted)
    return adapted.eval()


def measure(folder: Path, size: int) -> dict:
    backbones = {
        pool: create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS, global_pool=pool)
        for pool in ("avg", CONCAT_POOL)
    }
    models = {pool: backbone.model.eval() for pool, backbone in backbones.items()}
    data_config = backbones["avg"].data_config
    whole = whole_image(data_config, size)
    views = {  # name -> (eval preprocessing, pooling, BatchNorm statistics from the training images)
        "whole": (whole, "avg", False),
        "centre": (centre_crop(data_config, size), "avg", False),
        "whole, bilinear": (whole | {"interpolation": "bilinear"}, "avg", False),
        "whole, average + max": (whole, CONCAT_POOL, False),
        "whole, average + max, the data's BatchNorm statistics": (whole, CONCAT_POOL, True),
    }
    rows = {}
    for view, (config, pool, adapt_statistics) in views.items():
        data = ImageFolderDataModule(folder, num_workers=0, audit=False, data_config=config)
        data.setup("fit")
        started = time.perf_counter()
        model = data_statistics(models[pool], data.eval_dataloader("train")) if adapt_statistics else models[pool]
        split = {s: extract_features(model, data.eval_dataloader(s)) for s in ("train", "val", "test")}
        cv = cross_validate_probe(*split["train"])
        first = fit_probe(*split["train"], c=cv.c)
        both = torch.cat([split["train"][0], split["val"][0]]), torch.cat([split["train"][1], split["val"][1]])
        refit = fit_probe(*both, c=cv.c)
        test_x, test_y = split["test"][0].numpy(), split["test"][1].numpy()
        rows[view] = {
            "interpolation": config["interpolation"],
            "crop_pct": config["crop_pct"],
            "crop_mode": config["crop_mode"],
            "pool": pool,
            "c": cv.c,
            "cv_acc": cv.accuracy,
            "cv_stderr": cv.stderr,
            "test_acc_train": float(first.score(test_x, test_y)),
            "test_acc_train_val": float(refit.score(test_x, test_y)),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"{folder.name:<14} {view:<7} {rows[view]}", flush=True)
    return {"size": size, "views": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=[n for n in SUITE if n in SIZES], choices=list(SIZES))
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stored = RESULTS / "probe_views.json"
    table = json.loads(stored.read_text())["table"] if stored.is_file() else {}  # other sets' rows are kept
    table |= {name: measure(write(name, args.data_root), SIZES[name]) for name in args.datasets}
    save_json("probe_views", {"machine": machine(), "backbone": ARCH, "table": table})


if __name__ == "__main__":
    main()
