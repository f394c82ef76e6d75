"""Classification losses: cross-entropy, and focal loss for heavily imbalanced data.

Focal loss is written here because torchvision ships only the binary (sigmoid) form and MMPretrain is not a
dependency. Both losses take per-class weights and label smoothing, and reduce like `F.cross_entropy`: the
weighted mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy scaled by `(1 - p_true) ** gamma`, so confidently right examples count less (Lin et al. 2017).

    >>> logits, target = torch.tensor([[4.0, 0.0], [0.0, 0.1]]), torch.tensor([0, 0])
    >>> bool(focal_loss(logits, target, gamma=0.0).isclose(F.cross_entropy(logits, target)))
    True
    """
    ce = F.cross_entropy(logits, target, weight=weight, reduction="none", label_smoothing=label_smoothing)
    p_true = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    loss = (1 - p_true).pow(gamma) * ce
    norm = weight[target].sum() if weight is not None else target.new_tensor(len(target), dtype=loss.dtype)
    return loss.sum() / norm


def balanced_class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1, so the loss keeps its scale.

    >>> balanced_class_weights([30, 10]).tolist()
    [0.5, 1.5]
    """
    counts_t = torch.tensor(counts, dtype=torch.float)
    if (counts_t <= 0).any():
        raise ValueError(f"Every class needs training images for balanced weights; counts are {counts}.")
    inverse = 1.0 / counts_t
    return inverse * len(counts) / inverse.sum()
