"""Cheap measurements of a folder under a frozen backbone, taken before training to decide the recipe.

A linear probe on frozen features predicts what a backbone's features are worth on a data set (Kornblith et al.
2019, "Do Better ImageNet Models Transfer Better?": linear-probe and fine-tuned accuracy rank models alike), and
its features cost one forward pass per image, seconds for a few hundred images. So instead of guessing from
ImageNet habits, the recipe asks the data: which input resolution gives the backbone the most separable features,
how much L2 the probe needs, whether the frozen features beat the raw pixels at all (an SVM on them), and whether a
mirrored image still shows its class (so flips are safe augmentation), each by stratified cross-validation on the
training images alone (validation and test stay unseen). scikit-learn does the cross-validation
(`LogisticRegressionCV`, `StratifiedKFold`); what is written here is the choice of candidates and the rule for ties.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tl_lightning.data.transforms import DataConfig
from tl_lightning.models.features import RowSpace, extract_features, probe_pipeline
from tl_lightning.models.metrics import beats, binomial_stderr

log = logging.getLogger(__name__)

# The probe's inverse L2 strengths tried by cross-validation (on standardised features).
PROBE_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# The pixel baseline's image side: small enough for an SVM on a few thousand values per image.
PIXEL_SIDE = 32


@dataclass(frozen=True)
class ProbeScore:
    """A cross-validated linear probe: the chosen inverse L2 strength, its mean fold accuracy and that accuracy's
    standard error, from `folds` stratified folds.

    The standard error is the binomial one of the pooled held-out predictions, sqrt(acc (1 - acc) / n), not the
    spread of the fold means: both estimate the same quantity, but the spread of five numbers is itself so noisy
    that every rule comparing two probes "by more than a standard error" would follow noise."""

    c: float
    accuracy: float
    stderr: float
    folds: int


def cross_validate_probe(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> ProbeScore:
    """Choose the probe's C by stratified k-fold log loss (smoother than accuracy on a few hundred images) and
    report the chosen C's fold accuracy. k is 5, or the smallest class's count when that is lower (at least 2).

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(20, 8, generator=g) + 2, torch.randn(20, 8, generator=g) - 2])
    >>> score = cross_validate_probe(x, torch.tensor([0] * 20 + [1] * 20))
    >>> score.accuracy, score.folds
    (1.0, 5)
    """
    y = labels.numpy()
    folds = _folds(y)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    search = LogisticRegressionCV(Cs=list(PROBE_CS), cv=splitter, scoring="neg_log_loss", max_iter=2000)
    with warnings.catch_warnings():  # scikit-learn's notices about future defaults, not about this fit
        warnings.simplefilter("ignore", FutureWarning)
        x = RowSpace().fit_transform(StandardScaler().fit_transform(features.numpy()))
        search.fit(x, y)
    c = float(np.atleast_1d(search.C_)[0])
    _, _, accuracies = _held_out(_probe(c), features.numpy(), None, y, seed)
    mean = float(np.mean(accuracies))
    return ProbeScore(c, mean, binomial_stderr(mean, len(y)), folds)


@dataclass(frozen=True)
class MirrorScore:
    """A classifier (the features' probe, `mirror_test`, or the pixels' SVM, `pixel_baseline`) fitted on upright
    training images, scored on the held-out folds as they are (`upright`) and mirrored left to right (`mirrored`).
    `stderr` is the standard error of their difference: both score the same images, so only the images where the
    two disagree carry it (McNemar's: sqrt(b + c) / n for b images right only upright and c right only mirrored),
    and an accuracy of 1.0 does not make one mirrored miss significant."""

    upright: float
    mirrored: float
    stderr: float


def pixel_baseline(images: Dataset, seed: int = 0) -> tuple[ProbeScore, MirrorScore]:
    """Stratified k-fold accuracy of scikit-learn's `SVC()` (RBF) on the pixels of `images` (small, e.g.
    `PIXEL_SIDE` px, read through the datamodule so streamed data works too): what the data gives with no
    pretrained features at all (`c` is the SVM's default, 1). When it matches or beats the probe of the frozen
    features, those features do not fit the task and fine-tuning has to rewrite them.

    The same fits also score the held-out images mirrored (`mirror_test`): pixels are not mirror-invariant at
    all, so a mirrored image scores as well only where the training images already face both ways."""
    rows = [images[i] for i in range(len(images))]
    stacked = torch.stack([x for x, _ in rows]).float()
    pixels, mirrored = stacked.flatten(1).numpy(), torch.flip(stacked, dims=[-1]).flatten(1).numpy()
    y = np.array([int(label) for _, label in rows])
    right, right_mirrored, accuracies = _held_out(SVC, pixels, mirrored, y, seed)
    accuracy = float(np.mean(accuracies))
    score = ProbeScore(1.0, accuracy, binomial_stderr(accuracy, len(y)), len(accuracies))
    return score, _mirror_score(right, right_mirrored)


def _folds(y: np.ndarray) -> int:
    """k for stratified k-fold: 5, or the smallest class's count when that is lower (at least 2)."""
    return int(max(2, min(5, np.bincount(y).min())))


def _probe(c: float) -> Callable[[], BaseEstimator]:
    return lambda: probe_pipeline(c)


def _held_out(
    classifier: Callable[[], BaseEstimator], x: np.ndarray, mirrored: np.ndarray | None, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Stratified k-fold (`_folds`) fits of `classifier()` on `x`: whether each image's held-out prediction is right
    as it is and mirrored (all False without `mirrored`), and each fold's accuracy."""
    right, right_mirrored, accuracies = np.zeros(len(y), bool), np.zeros(len(y), bool), []
    for train, held in StratifiedKFold(_folds(y), shuffle=True, random_state=seed).split(x, y):
        fitted = classifier().fit(x[train], y[train])
        right[held] = fitted.predict(x[held]) == y[held]
        if mirrored is not None:
            right_mirrored[held] = fitted.predict(mirrored[held]) == y[held]
        accuracies.append(float(right[held].mean()))
    return right, right_mirrored, accuracies


def _mirror_score(right: np.ndarray, right_mirrored: np.ndarray) -> MirrorScore:
    disagree = int((right != right_mirrored).sum())
    return MirrorScore(float(right.mean()), float(right_mirrored.mean()), math.sqrt(disagree) / len(right))


def whole_image(data_config: DataConfig, size: int) -> DataConfig:
    """`data_config` at `size` px, evaluating on the whole image squashed to the square (`crop_mode` squash)."""
    channels = int(data_config["input_size"][0])
    return DataConfig(**data_config) | {"input_size": (channels, size, size), "crop_pct": 1.0, "crop_mode": "squash"}


def pixel_view(data_config: DataConfig) -> DataConfig:
    """`data_config` at `PIXEL_SIDE` px, area-averaged over the whole image: what `pixel_baseline` reads."""
    channels = int(data_config["input_size"][0])
    return DataConfig(**data_config) | {
        "input_size": (channels, PIXEL_SIDE, PIXEL_SIDE),
        "crop_pct": 1.0,
        "interpolation": "area",
    }


def centre_crop(data_config: DataConfig, size: int) -> DataConfig:
    """`data_config` at `size` px with the weights' own eval centre crop (timm's protocol)."""
    channels = int(data_config["input_size"][0])
    crop = float(data_config.get("crop_pct") or 1.0)
    return DataConfig(**data_config) | {"input_size": (channels, size, size), "crop_pct": crop, "crop_mode": "center"}


FeatureSource = Callable[[DataConfig], tuple[torch.Tensor, torch.Tensor]]


def frozen_features(
    backbone: nn.Module, images: Callable[[DataConfig], Dataset], batch_size: int = 64
) -> FeatureSource:
    """The frozen features and labels of the training images under a preprocessing (`images(config)` gives the
    images so), BatchNorm statistics fixed, extracted once per preprocessing: the resolution probe, the eval view
    and the mirror test read the same features at the resolution the run uses."""
    extracted: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def features(config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
        key = repr(sorted(config.items()))
        if key not in extracted:
            extracted[key] = extract_features(backbone, DataLoader(images(config), batch_size=batch_size))
        return extracted[key]

    return features


def probe_at_resolutions(
    features: FeatureSource, data_config: DataConfig, sizes: Sequence[int]
) -> dict[int, ProbeScore]:
    """The cross-validated probe of the whole training images (`whole_image`) at each input size in `sizes`."""
    scores = {}
    for size in sizes:
        scores[size] = cross_validate_probe(*features(whole_image(data_config, size)))
        log.info(
            "recipe: probe at %d px: cross-validated accuracy %.3f +- %.3f (C=%g)",
            size,
            scores[size].accuracy,
            scores[size].stderr,
            scores[size].c,
        )
    return scores


def probe_centre_crop(features: FeatureSource, data_config: DataConfig, size: int) -> ProbeScore:
    """The cross-validated probe of the training images under the weights' eval centre crop at `size` px, to set
    against the whole image's (`probe_at_resolutions`)."""
    score = cross_validate_probe(*features(centre_crop(data_config, size)))
    log.info(
        "recipe: probe of the weights' %.3f centre crop at %d px: cross-validated accuracy %.3f +- %.3f (C=%g)",
        float(data_config.get("crop_pct") or 1.0),
        size,
        score.accuracy,
        score.stderr,
        score.c,
    )
    return score


def mirror_test(
    upright: torch.Tensor, mirrored: torch.Tensor, labels: torch.Tensor, c: float, seed: int = 0
) -> MirrorScore:
    """Whether a mirrored image still shows its class, as a probe of the frozen features sees it: fitted on the
    upright images of each training fold, scored on the held-out fold upright and mirrored (the same images, so
    the two accuracies differ only by what mirroring changes). ImageNet's features were trained with flips, so a
    mirrored photo, texture or face lands where the upright one does; a mirrored digit or letter does not.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(20, 4, generator=g) + 2, torch.randn(20, 4, generator=g) - 2])
    >>> y = torch.tensor([0] * 20 + [1] * 20)
    >>> mirror_test(x, x, y, c=1.0).mirrored, mirror_test(x, -x, y, c=1.0).mirrored  # unchanged; classes swapped
    (1.0, 0.0)
    """

    right, right_mirrored, _ = _held_out(_probe(c), upright.numpy(), mirrored.numpy(), labels.numpy(), seed)
    return _mirror_score(right, right_mirrored)


class Mirrored(Dataset):
    """`images` with every image tensor mirrored left to right (the label kept). On the whole image squashed to
    the input square this is the preprocessed mirror image."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        return torch.flip(image, dims=[-1]), label


def probe_mirrored(
    features: FeatureSource, mirrored: FeatureSource, data_config: DataConfig, size: int, c: float
) -> MirrorScore:
    """`mirror_test` of the whole training images at `size` px with the probe's `c`; `mirrored` extracts the
    features of the `Mirrored` images."""
    config = whole_image(data_config, size)
    upright, labels = features(config)
    score = mirror_test(upright, mirrored(config)[0], labels, c)
    log.info(
        "recipe: a probe fitted on upright training images scores %.3f on held-out ones, %.3f on them mirrored "
        "(standard error of the difference %.3f)",
        score.upright,
        score.mirrored,
        score.stderr,
    )
    return score


def best_resolution(scores: dict[int, ProbeScore], native: int) -> int:
    """The weights' own size unless a smaller one's probe beats it by more than one standard error; then the
    smallest size within one standard error of the best (the one-standard-error rule of Breiman et al.: a size
    the data cannot tell from the best is not worth its compute).

    The weights' size is the prior because the weights learnt their features there and fine-tuning, unlike the
    frozen probe that measures, can use every extra position."""
    best = scores[max(scores, key=lambda size: (scores[size].accuracy, -size))]

    def within(score: ProbeScore) -> bool:  # one the best does not beat
        return not beats(best.accuracy, score.accuracy, best.stderr)

    if native in scores and within(scores[native]):
        return native
    return min(size for size, score in scores.items() if within(score))
