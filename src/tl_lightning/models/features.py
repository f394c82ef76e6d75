"""Frozen-backbone features: extracted once per image, for the linear probe and for the frozen training phase.

A frozen backbone maps an image, preprocessed deterministically, to the same vector every epoch, so the linear
probe (and the head on a frozen backbone) need one backbone pass per image, not one per epoch. The key hashes
the backbone's name and build arguments (its pooling among them), its weights' provenance (SHA-256 or source), the
preprocessing, and every file's path, label and stat stamp (`utils.file_stamp`: size, times, inode): change any of
them and the features are extracted again.
`finetuning.FrozenFeatureCache` does the same in memory for training: the head trains on `Features` batches
while the backbone is frozen.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tl_lightning.utils import atomic_path, file_stamp

log = logging.getLogger(__name__)

Samples = Sequence[tuple[Path, int]]


@dataclass
class Features:
    """A batch of pooled backbone features `(N, D)`, as opposed to images: `TransferClassifier` runs only its
    head on it. A type of its own, so no code tells features from images by tensor shape. Not frozen: Lightning
    moves a batch to the device by rebuilding its dataclasses field by field."""

    tensor: torch.Tensor

    def __len__(self) -> int:
        return len(self.tensor)


class FeatureDataset(Dataset):
    """`(features, label)` rows, batched by `collate_features` into `(Features, labels)`."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]


def collate_features(rows: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Features, torch.Tensor]:
    features, labels = zip(*rows, strict=True)
    return Features(torch.stack(features)), torch.stack(labels)


@torch.no_grad()  # not inference_mode: calibration fits a temperature on these outputs with autograd
def extract_features(backbone: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (a backbone's pooled features, a classifier's logits) and labels of every batch of `loader`, in
    order, with every module in eval mode (BN statistics fixed) and each module's mode restored afterwards."""
    modes = [m.training for m in backbone.modules()]  # restored module by module: BatchNorm policies survive
    backbone.eval()
    device = next(backbone.parameters()).device
    features, labels = [], []
    for x, y in loader:
        features.append(backbone(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    for module, training in zip(backbone.modules(), modes, strict=True):
        module.training = training
    return torch.cat(features), torch.cat(labels)


def cache_key(
    backbone: str,
    weights: Mapping[str, Any],
    data_config: Mapping[str, Any],
    splits: Mapping[str, Samples],
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """A hex digest of everything the features depend on (see the module docstring); `backbone_kwargs` are the
    `timm.create_model` arguments (`backbones.build_kwargs`): a pooling or an input-channel count changes the
    features as much as the weights do."""
    files = {
        split: [[str(path), label, *file_stamp(path)] for path, label in samples] for split, samples in splits.items()
    }
    provenance = {k: weights.get(k) for k in ("source", "sha256", "file", "tag") if weights.get(k) is not None}
    payload = {"backbone": backbone, "weights": provenance, "data_config": dict(data_config), "files": files}
    if backbone_kwargs:
        payload["backbone_kwargs"] = dict(backbone_kwargs)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureCache:
    """Feature tensors per split in `folder/<key>.pt`, written through a temp file renamed into place."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return {split: (value["features"], value["labels"]) for split, value in saved.items()}
        except Exception as err:  # any damage (truncation, another format) means: extract again, never trust it
            log.warning("Ignoring an unreadable feature cache %s (%s): extracting the features again.", path, err)
            return None

    def save(self, key: str, features: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
        with atomic_path(self.path(key)) as tmp:
            torch.save({split: {"features": f, "labels": y} for split, (f, y) in features.items()}, tmp)
        return self.path(key)


def split_features(
    backbone: nn.Module,
    loaders: Mapping[str, DataLoader],
    key: str,
    cache: FeatureCache | None,
    extract: Callable[[nn.Module, DataLoader], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """Features per split from `cache` under `key`, or extracted by `extract` (default `extract_features`, a plain
    loop where the backbone is; `outputs.predict_outputs` goes through a trainer) and cached; also whether the
    cache had them."""
    extract = extract or extract_features
    if cache is not None and (found := cache.load(key)) is not None and set(found) >= set(loaders):
        log.info("Features from the cache: %s", cache.path(key))
        return {split: found[split] for split in loaders}, True
    features = {split: extract(backbone, loader) for split, loader in loaders.items()}
    if cache is not None:
        log.info("Features cached in %s", cache.save(key, features))
    return features, False


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    c: float = 1.0,
    max_iter: int = 2000,
    class_weight: Mapping[int, float] | None = None,
) -> Pipeline:
    """The linear probe a model keeps: `probe_pipeline` on every feature, since one fit gains little from the rows'
    span and this keeps the kept probe's solver path unchanged."""
    return probe_pipeline(c, max_iter, class_weight, row_space=False).fit(features.numpy(), labels.numpy())


def probe_pipeline(
    c: float = 1.0, max_iter: int = 2000, class_weight: Mapping[int, float] | None = None, row_space: bool = True
) -> Pipeline:
    """The linear probe every measurement and the probe floor fit: standardise, then multinomial logistic regression
    (scikit-learn) with L2 strength `1/c`, fitted in the training rows' span (`RowSpace`) unless `row_space` is off."""
    logistic = LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight)
    return make_pipeline(StandardScaler(), *([RowSpace()] if row_space else []), logistic)


class RowSpace(TransformerMixin, BaseEstimator):
    """Coordinates in the span of the training rows, where there are fewer rows than features.

    An L2-penalised linear model's weights lie in that span (the loss's gradient is a sum of rows), so fitting it on
    these n coordinates instead of d features gives the same weights and predictions at a fraction of the cost: a
    few hundred images of 2,560 pooled features (average + max) are fitted on a few hundred columns. Written here
    because scikit-learn's `PCA` centres (this must not: the intercept is unpenalised, the weights are) and neither
    it nor `TruncatedSVD` keeps every direction by default.

    >>> import numpy as np
    >>> RowSpace().fit(np.eye(3, 8)).transform(np.ones((2, 8))).shape
    (2, 3)
    """

    def fit(self, x: np.ndarray, y: Any = None) -> RowSpace:
        rows, columns = x.shape
        self.components_: np.ndarray | None = None
        if rows < columns:
            _, singular, vt = np.linalg.svd(x, full_matrices=False)
            kept = singular > singular[0] * max(x.shape) * np.finfo(x.dtype).eps
            self.components_ = vt[kept].T
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x if self.components_ is None else x @ self.components_


def probe_as_linear(probe: Pipeline, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe as one linear layer's `(weight, bias)` on raw features, the steps in front of the logistic
    regression (standardisation, `RowSpace`) folded into the weights (on standardised features, for a pipeline
    without the scaler); the logits of a two-class
    probe (scikit-learn keeps one row for it) split symmetrically."""
    logistic = probe[-1]
    weight = torch.as_tensor(logistic.coef_, dtype=torch.float)
    bias = torch.as_tensor(logistic.intercept_, dtype=torch.float)
    for step in reversed(probe[:-1]):  # each step in front folded in: the row-space projection, the scaler
        if isinstance(step, RowSpace) and step.components_ is not None:
            weight = weight @ torch.as_tensor(step.components_, dtype=torch.float).T
        elif isinstance(step, StandardScaler):
            weight = weight / torch.as_tensor(step.scale_, dtype=torch.float)
            bias = bias - weight @ torch.as_tensor(step.mean_).float()
    if len(logistic.classes_) != num_classes:
        raise ValueError(f"The probe saw {len(logistic.classes_)} of {num_classes} classes in the training features.")
    if num_classes == 2:  # p(1) = sigmoid(w.x + b) = softmax([-(w.x + b) / 2, (w.x + b) / 2])[1]
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return weight, bias
