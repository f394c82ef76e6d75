"""The linear probe: how good are the pretrained features for this data, before any fine-tuning?

Logistic regression (scikit-learn, on standardised features) on the frozen backbone's pooled features of the
training split, scored on validation (and test). The accuracy says how far the data is from what the backbone
learnt, and so how much of the backbone needs training; `interpret` turns it into a finetuning preset.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl

from tl_lightning.models.backbones import build_kwargs
from tl_lightning.models.features import FeatureCache, cache_key, fit_probe, split_features
from tl_lightning.models.outputs import predict_outputs
from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)


class Verdict(NamedTuple):
    """What a probe accuracy above `lowest` means, and the finetuning preset to start from."""

    lowest: float
    meaning: str
    preset: str


# Best first. Feature extraction is suggested only where the probe leaves almost nothing to fine-tuning, and the
# default (which starts from this probe and keeps it as its floor) everywhere else; the thresholds were set on the
# benchmark suite. docs/probe.md's table is this one
# (tests/app/test_readme.py).
VERDICTS = (
    Verdict(
        0.97,
        "excellent: the pretrained features already separate the classes; feature extraction is enough unless "
        "the last point matters",
        "finetuning=feature_extraction (fast), or the default lp_ft",
    ),
    Verdict(
        0.70,
        "good: fine-tuning usually gains several points here (digits: probe 0.88, fine-tuned 0.99); the default "
        "starts from this probe and keeps it if fine-tuning does not beat it",
        "finetuning=lp_ft (the default)",
    ),
    Verdict(0.50, "fair: the features need adapting; fine-tune every group", "finetuning=lp_ft (the default) or full"),
    Verdict(
        0.0,
        "poor: a large domain gap; fine-tune everything, or pick a backbone pretrained nearer this domain",
        "finetuning=full",
    ),
)


def interpret(accuracy: float) -> tuple[str, str]:
    """The interpretation and the recommended finetuning preset for a probe accuracy."""
    verdict = next(v for v in VERDICTS if accuracy > v.lowest or v.lowest == 0.0)
    return verdict.meaning, verdict.preset


@dataclass(frozen=True)
class ProbeResult:
    """Probe accuracies per split, the verdict, and whether the features came from the cache."""

    accuracy: dict[str, float]
    interpretation: str
    recommendation: str
    feature_dim: int
    train_images: int
    from_cache: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_probe(
    model: Any, datamodule: Any, cache_dir: str | Path | None, c: float = 1.0, trainer: pl.Trainer | None = None
) -> ProbeResult:
    """Probe `model.backbone` on `datamodule`'s splits (eval preprocessing), caching features under `cache_dir`.

    `model` is a `TransferClassifier`; `datamodule` an `ImageFolderDataModule` already set up. With a `trainer`,
    the features come through its predict loop (its device, precision and progress bar; `task=probe` passes one),
    else from a plain loop where the backbone is. The verdict is made on validation accuracy (test, if any, is
    reported beside it, never used to choose).
    """
    started = time.perf_counter()
    splits = [s for s in ("train", "val", "test") if s in datamodule.splits and any(datamodule.splits[s].values())]
    if "train" not in splits or "val" not in splits:
        raise BadValue(f"The linear probe needs train and val splits; '{datamodule.root}' has {splits}.")
    loaders = {s: datamodule.eval_dataloader(s) for s in splits}
    random_init = model.weights_info.get("source") == "random-init"
    if random_init:
        log.warning("The backbone has random weights: the probe measures random features, and nothing is cached.")
    cache = None if random_init or cache_dir is None else FeatureCache(cache_dir)
    key = cache_key(
        model.hparams.backbone,
        model.weights_info,
        model.data_config,
        {s: datamodule.samples(s) for s in splits},
        build_kwargs(model.hparams.get("backbone_kwargs"), model.hparams.get("pool")),
    )
    extract = None if trainer is None else partial(predict_outputs, trainer)
    features, from_cache = split_features(model.backbone, loaders, key, cache, extract)
    probe = fit_probe(*features["train"], c=c)
    accuracy = {s: float(probe.score(f.numpy(), y.numpy())) for s, (f, y) in features.items()}
    meaning, preset = interpret(accuracy["val"])
    train_features = features["train"][0]
    return ProbeResult(
        accuracy,
        meaning,
        preset,
        train_features.shape[1],
        len(train_features),
        from_cache,
        round(time.perf_counter() - started, 2),
    )
