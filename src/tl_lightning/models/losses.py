"""Classification losses and what feeds them: focal loss, class weights, and the batch mixing behind soft targets.

Focal loss is written here because torchvision ships only the binary (sigmoid) form and MMPretrain is not a
dependency. Both losses take per-class weights and label smoothing, and reduce like `F.cross_entropy`: the
weighted mean over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target

from tl_lightning.utils import BadValue


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy scaled by `(1 - p_true) ** gamma`, so confidently right examples count less (Lin et al. 2017).
    `reduction` takes `F.cross_entropy`'s values: "none" gives each image's weighted loss, "mean" their mean
    weighted by class (so a class weight scales how much an image counts, not the loss's scale).

    >>> logits, target = torch.tensor([[4.0, 0.0], [0.0, 0.1]]), torch.tensor([0, 0])
    >>> bool(focal_loss(logits, target, gamma=0.0).isclose(F.cross_entropy(logits, target)))
    True
    """
    ce = F.cross_entropy(logits, target, weight=weight, reduction="none", label_smoothing=label_smoothing)
    p_true = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    loss = (1 - p_true).pow(gamma) * ce
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction != "mean":
        raise ValueError(f"focal_loss(reduction={reduction!r}): use 'mean', 'sum' or 'none', as F.cross_entropy takes")
    norm = weight[target].sum() if weight is not None else target.new_tensor(len(target), dtype=loss.dtype)
    return loss.sum() / norm


def balanced_class_weights(counts: list[int]) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1, so the loss keeps its scale.

    >>> balanced_class_weights([30, 10]).tolist()
    [0.5, 1.5]
    """
    counts_t = torch.tensor(counts, dtype=torch.float)
    if (counts_t <= 0).any():
        raise BadValue(f"Every class needs training images for balanced weights; counts are {counts}.")
    inverse = 1.0 / counts_t
    return inverse * len(counts) / inverse.sum()


def create_mixup(
    mixup_alpha: float, cutmix_alpha: float, prob: float, label_smoothing: float, num_classes: int
) -> Mixup | None:
    """timm's batch-level Mixup/CutMix, or `None` when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def mix_batch(mixup: Mixup, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`mixup(x, y)` for a batch of any size. timm pairs each image with its mirror in the batch and asserts an
    even batch, which an odd `batch_size`, a last partial batch or a per-device share can break mid-run; here the
    odd image out passes unmixed with the same label smoothing as the rest.

    >>> mixup = create_mixup(0.2, 0.0, 1.0, 0.1, num_classes=3)
    >>> images, targets = mix_batch(mixup, torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    >>> images.shape, targets.shape, [round(t, 3) for t in targets[-1].tolist()]
    (torch.Size([5, 3, 8, 8]), torch.Size([5, 3]), [0.033, 0.933, 0.033])
    """
    even = len(x) - len(x) % 2
    if even == len(x):
        return mixup(x, y)
    alone = mixup_target(y[even:], mixup.num_classes, lam=1.0, smoothing=mixup.label_smoothing)
    if even == 0:
        return x, alone
    mixed, targets = mixup(x[:even], y[:even])
    return torch.cat([mixed, x[even:]]), torch.cat([targets, alone.to(targets.dtype)])


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    """Hinton et al. (2015): `alpha` x T^2 x KL(teacher || student) at temperature T, plus (1 - alpha) x hard loss.

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's whatever the temperature.
    """
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard_loss
