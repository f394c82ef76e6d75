"""Statistics of the training inputs, kept in the checkpoint, to warn when prediction inputs look different.

A model fed images unlike its training data (another camera, inverted X-rays, a forgotten normalisation)
still returns confident probabilities. Per channel we keep how the per-image mean and standard deviation of
the *preprocessed* training images vary; a prediction batch whose average per-image mean or deviation lies
several training standard deviations away is flagged. Cheap, model-free, and it catches the common
pipeline mistakes; it is not an out-of-distribution detector for subtle shifts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

# A batch is flagged when its average lies this many training standard deviations from the training average.
DEFAULT_THRESHOLD = 4.0


@dataclass(frozen=True)
class InputStatistics:
    """Per channel: mean and spread over training images of each image's mean and of each image's std."""

    mean_of_means: list[float]
    std_of_means: list[float]
    mean_of_stds: list[float]
    std_of_stds: list[float]
    images: int

    @classmethod
    def of(cls, images: torch.Tensor) -> InputStatistics:
        """From a stack of preprocessed images `(N, C, H, W)`."""
        means, stds = _per_image(images)
        return cls(
            means.mean(0).tolist(), means.std(0).tolist(), stds.mean(0).tolist(), stds.std(0).tolist(), len(images)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def distance(self, batch: torch.Tensor) -> tuple[float, str]:
        """The largest distance, in training standard deviations, of the batch's average statistics; and which."""
        means, stds = _per_image(batch.float().cpu())
        worst, where = 0.0, ""
        for name, values, centre, spread in (
            ("mean", means, self.mean_of_means, self.std_of_means),
            ("std", stds, self.mean_of_stds, self.std_of_stds),
        ):
            for channel, (value, mu, sd) in enumerate(zip(values.mean(0).tolist(), centre, spread, strict=True)):
                z = abs(value - mu) / max(sd, 1e-6)
                if z > worst:
                    worst, where = z, f"channel {channel} {name}: {value:.3f} vs training {mu:.3f} +- {sd:.3f}"
        return worst, where

    def check(self, batch: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> str | None:
        """A message when `batch` is far from the training inputs, else None."""
        distance, where = self.distance(batch)
        if distance <= threshold:
            return None
        return (
            f"inputs are {distance:.1f} training standard deviations from the training images ({where}). "
            "Check that these images come from the same source and preprocessing as the training data "
            "(colour vs grayscale, inverted, other camera or scanner); predictions on them may be unreliable."
        )


def _per_image(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = images.flatten(2)
    return flat.mean(-1), flat.std(-1)
