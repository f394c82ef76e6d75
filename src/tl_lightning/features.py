"""Frozen-backbone features: extracted once per image, cached on disk under a key of everything they depend on.

A frozen backbone maps an image, preprocessed deterministically, to the same vector every epoch, so the linear
probe (and the head on a frozen backbone) need one backbone pass per image, not one per epoch. The key hashes
the backbone's name, its weights' provenance (SHA-256 or source), the preprocessing, and every file's path,
label, size and modification time: change any of them and the features are extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

Samples = Sequence[tuple[Path, int]]


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and labels of every batch of `loader`, with the backbone in eval mode (BN statistics fixed)."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    features, labels = [], []
    for x, y in loader:
        features.append(backbone(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


def cache_key(
    backbone: str, weights: Mapping[str, Any], data_config: Mapping[str, Any], splits: Mapping[str, Samples]
) -> str:
    """A hex digest of everything the features depend on (see the module docstring)."""
    files = {split: [[str(path), label, *_stat(path)] for path, label in samples] for split, samples in splits.items()}
    provenance = {k: weights.get(k) for k in ("source", "sha256", "file", "tag") if weights.get(k) is not None}
    payload = {"backbone": backbone, "weights": provenance, "data_config": dict(data_config), "files": files}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _stat(path: Path) -> tuple[int, int]:
    info = Path(path).stat()
    return info.st_size, info.st_mtime_ns


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
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return {split: (value["features"], value["labels"]) for split, value in saved.items()}

    def save(self, key: str, features: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path, tmp = self.path(key), self.path(key).with_suffix(".pt.tmp")
        torch.save({split: {"features": f, "labels": y} for split, (f, y) in features.items()}, tmp)
        os.replace(tmp, path)
        return path


def split_features(
    backbone: nn.Module,
    loaders: Mapping[str, DataLoader],
    key: str,
    cache: FeatureCache | None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """Features per split from `cache` under `key`, or extracted (and cached); also whether the cache had them."""
    if cache is not None and (found := cache.load(key)) is not None and set(found) >= set(loaders):
        log.info("Features from the cache: %s", cache.path(key))
        return {split: found[split] for split in loaders}, True
    features = {split: extract_features(backbone, loader) for split, loader in loaders.items()}
    if cache is not None:
        log.info("Features cached in %s", cache.save(key, features))
    return features, False
