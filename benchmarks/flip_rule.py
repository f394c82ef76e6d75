"""What the recipe's flip rule (`finetuning.recipe.choose_hflip`) measures on each suite set, and what it chooses.

For each set, the two mirror tests the recipe runs before training, through the same functions and the same images
(at most 1,000 training images, evenly spaced, at the resolution the default recipe uses, read through the
library's data module): a logistic probe of the frozen EfficientNet-Lite0 features and an RBF SVM on 32 px
pixels, each fitted on upright training images and scored on the held-out folds upright and mirrored. Flips go
only where both score the mirrored images lower by more than the difference's standard error. The results go to
`results/flip_rule.json`; `report.py` renders them.

    python benchmarks/flip_rule.py [--datasets digits galaxies ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _results import machine, save_json
from suite import DEFAULT_ROOT, SUITE, write
from torch.utils.data import Subset

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.finetuning.measure import (
    Mirrored,
    frozen_features,
    pixel_baseline,
    pixel_view,
    probe_at_resolutions,
    probe_mirrored,
)
from tl_lightning.finetuning.plan import MEASURED_IMAGES, evenly_spaced
from tl_lightning.finetuning.recipe import choose_hflip
from tl_lightning.models.backbones import create_backbone

ARCH, WEIGHTS = "tf_efficientnet_lite0", "package:efficientnet_lite0"
# The resolution the default recipe runs each set at (its `model.image_size` in the peers benchmark's runs).
SIZE = 224


def measure(folder: Path) -> dict:
    started = time.perf_counter()
    backbone = create_backbone(ARCH, pretrained=True, weights_file=WEIGHTS)
    backbone.model.eval()
    scan = ImageFolderDataModule(folder, num_workers=0, audit=False)
    spread = evenly_spaced(len(scan.samples("train")), MEASURED_IMAGES)

    def images(config: dict) -> Subset:
        return Subset(scan.dataset("train", train=False, data_config=config), spread)

    config = backbone.data_config
    features = frozen_features(backbone.model, images)
    probe = probe_at_resolutions(features, config, [SIZE])[SIZE]
    mirrored = frozen_features(backbone.model, lambda c: Mirrored(images(c)))
    feature_test = probe_mirrored(features, mirrored, config, SIZE, probe.c)
    _, pixel_test = pixel_baseline(images(pixel_view(config)))
    choice = choose_hflip(feature_test, pixel_test)
    row = {
        "images": len(spread),
        "features": asdict(feature_test),
        "pixels": asdict(pixel_test),
        "hflip": choice.value,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{folder.name:<14} {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("TL_SUITE_ROOT", DEFAULT_ROOT)))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = {name: measure(write(name, args.data_root)) for name in args.datasets}
    save_json("flip_rule", {"machine": machine(), "backbone": ARCH, "size": SIZE, "table": table})


if __name__ == "__main__":
    main()
