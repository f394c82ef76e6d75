"""Grouped options of `TransferClassifier`: the knobs a user rarely touches, each group a small typed dataclass.

Each group is accepted as the dataclass or as a plain mapping (what Hydra and YAML give), and is stored in the
checkpoint's hyperparameters as a plain dict, so checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from tl_lightning.utils import BadValue

__all__ = ["Distillation", "Imbalance", "Performance", "Regularization", "as_dict", "check_combinations", "coerce"]

LOSSES = ("cross_entropy", "focal")


@dataclass(frozen=True)
class Regularization:
    """Against overfitting a small training set.

    Args:
        label_smoothing: label smoothing of the loss.
        mixup_alpha: batch-level Mixup (timm's `Mixup`, label-smoothing aware); 0 is off. Training batches then
            have soft targets, so train accuracy is not logged.
        cutmix_alpha: batch-level CutMix, likewise; 0 is off.
        mixup_prob: probability of mixing a batch.
    """

    label_smoothing: float = 0.1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BadValue(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass(frozen=True)
class Imbalance:
    """How the loss treats classes of unequal size.

    Args:
        class_weights: per-class loss weights in class-index order; `None` for none. For inverse-frequency weights
            pass `balanced_class_weights(datamodule.class_counts())` (the command line does this for
            ``model.imbalance.class_weights=balanced``).
        loss: ``"cross_entropy"`` or ``"focal"`` (for heavy imbalance; see `focal_gamma`).
        focal_gamma: focusing exponent of the focal loss.
    """

    class_weights: Sequence[float] | None = None
    loss: str = "cross_entropy"
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise BadValue(f"loss must be one of {LOSSES}, got {self.loss!r}.")
        if isinstance(self.class_weights, str):
            raise BadValue(
                f"class_weights must be a list of floats or None, got {self.class_weights!r}. For inverse-frequency "
                "weights pass balanced_class_weights(datamodule.class_counts())."
            )
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a trained teacher (Hinton et al. 2015).

    The teacher is frozen, fed each batch converted to its own size and normalisation, and kept out of the
    student's checkpoints.

    Args:
        teacher_checkpoint: a `TransferClassifier` checkpoint with the same classes; `None` turns distillation off.
        temperature: softening temperature of both distributions.
        alpha: weight of the soft (teacher) term; the hard labels get `1 - alpha`.
    """

    teacher_checkpoint: str | None = None
    temperature: float = 4.0
    alpha: float = 0.7


@dataclass(frozen=True)
class Performance:
    """Speed settings that do not change what is computed.

    Args:
        channels_last: keep weights and image batches in channels-last memory layout (faster convolutions with AMP
            on recent GPUs and on CPUs with oneDNN).
        compile: compile the backbone with `torch.compile` when the trainer sets the model up (in place, so
            checkpoint keys do not change).
        compile_options: passed to `torch.compile` (e.g. ``{"mode": "max-autotune"}``).
    """

    channels_last: bool = False
    compile: bool = False
    compile_options: Mapping[str, Any] = field(default_factory=dict)


def check_combinations(regularization: Regularization, imbalance: Imbalance, distillation: Distillation) -> None:
    """Refuse options that cannot work together, naming them."""
    if distillation.teacher_checkpoint and regularization.mixes:
        raise BadValue("Distillation with Mixup/CutMix is not supported: turn one of them off.")
    if regularization.mixes and (imbalance.loss == "focal" or imbalance.class_weights is not None):
        raise BadValue("Mixup/CutMix make soft targets: use them without class_weights, with cross_entropy.")


Options = TypeVar("Options", Regularization, Imbalance, Distillation, Performance)


def coerce(kind: type[Options], value: Options | Mapping[str, Any] | None) -> Options:
    """`value` as a `kind`: an instance as it is, a mapping by its keys, `None` as the defaults.

    Raises:
        ValueError: a mapping with keys `kind` does not have; the message lists the known ones.
    """
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        known = [f.name for f in fields(kind)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise BadValue(f"Unknown {kind.__name__} option(s) {unknown}; known: {known}.")
        return kind(**value)
    raise TypeError(f"Expected {kind.__name__}, a mapping or None; got {type(value).__name__}.")


def as_dict(options: Any) -> dict[str, Any]:
    """A plain dict of an options dataclass, for hyperparameters that load with `weights_only=True`."""
    plain = {tuple: list, Mapping: dict}
    return {
        k: next((to(v) for kind, to in plain.items() if isinstance(v, kind)), v) for k, v in asdict(options).items()
    }
