"""The recipe's automatic choices, made from the training images rather than from ImageNet's habits.

ImageNet recipes assume large photos with the subject somewhere inside: a 224 px input, an 87.5% eval centre crop
and `RandomResizedCrop` down to 8% of the area. On small or full-frame images (a 25 px face, an 8 px digit, a
48 px patch) those crops cut the subject away; on a few hundred images, crops that strong are more noise than
augmentation. BiT's HyperRule (Kolesnikov et al. 2020) sets resolution and crop from the images' size instead,
and fastai evaluates on the whole image. These rules follow them, and are written here because no library
offers them. Each choice comes with the sentence that justifies it, so a run can say what it chose and why.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tl_lightning.finetuning.measure import ProbeScore, best_resolution

# Input sizes tried for images smaller than the weights' resolution. BiT's HyperRule (Kolesnikov et al. 2020)
# resizes images under 96 px to 160 and crops 128; fastai's users train at 224. Rather than fix one, the recipe
# measures each (`finetuning.measure.probe_at_resolutions`) and takes the smallest the data cannot tell from the best.
CANDIDATE_SIZES = (96, 128, 160, 224)
# From this many training images on, ImageNet's strong random crops pay for themselves.
MANY_IMAGES = 10_000


@dataclass(frozen=True)
class Choice:
    """One automatic setting: the config key it fills, its value, and why."""

    key: str
    value: Any
    because: str

    def line(self) -> str:
        return f"recipe: {self.key}={self.value} because {self.because}"


def resolution_candidates(median_side: float, native: int, stride: int) -> list[int]:
    """The input sizes worth measuring: none for images at least the weights' resolution (they get it), else the
    `CANDIDATE_SIZES` up to the weights' own that the backbone's stride divides, and the weights' own.

    >>> resolution_candidates(28, native=224, stride=32)
    [96, 128, 160, 224]
    >>> resolution_candidates(300, native=224, stride=32)
    []
    """
    if median_side >= native:
        return []
    return sorted({size for size in CANDIDATE_SIZES if size < native and size % stride == 0} | {native})


def choose_resolution(median_side: float, native: int, measured: Mapping[int, ProbeScore] | None = None) -> Choice:
    """The weights' own resolution for images at least that large; for smaller ones, the measured size: the
    smallest whose cross-validated probe on the training images is within one standard error of the best."""
    key = "model.image_size"
    if median_side >= native or not measured:
        because = f"the training images (median short side {median_side:.0f} px) are at least the weights' {native} px"
        return Choice(key, native, because)
    size = best_resolution(measured)
    scores = ", ".join(f"{s} px {m.accuracy:.3f}" for s, m in sorted(measured.items()))
    because = (
        f"the training images are small (median short side {median_side:.0f} px) and a cross-validated linear probe "
        f"of their frozen features scores {scores}: the smallest size within one standard error of the best"
    )
    return Choice(key, size, because)


def choose_crops(median_side: float, resolution: int, train_images: int, weights_crop_pct: float) -> list[Choice]:
    """Eval crop and train crop scale: none and mild for images smaller than the input resolution (the whole
    image is the subject); the weights' eval crop and a moderate train crop for larger ones; ImageNet's
    `RandomResizedCrop(0.08, 1)` only with many images."""
    if median_side < resolution:
        return [
            Choice("model.crop_pct", 1.0, "small images have no border to spare: evaluate on the whole image"),
            Choice("data.train_transform.crop_scale", [0.75, 1.0], "random crops of small images keep at least "
                   "75% of the area, so the subject stays in view"),
        ]  # fmt: skip
    crop = Choice("model.crop_pct", weights_crop_pct, f"the images are at least the input resolution {resolution} "
                  "px: the weights' own eval centre crop")  # fmt: skip
    if train_images >= MANY_IMAGES:
        return [crop, Choice("data.train_transform.crop_scale", [0.08, 1.0], f"{train_images} training images "
                             f"(>= {MANY_IMAGES}) carry ImageNet-strength random crops")]  # fmt: skip
    return [crop, Choice("data.train_transform.crop_scale", [0.35, 1.0], f"{train_images} training images "
                         f"(< {MANY_IMAGES}): random crops keep at least 35% of the area")]  # fmt: skip


def automatic_choices(
    train_sides: Sequence[int],
    train_count: int,
    native: int,
    stride: int,
    weights_crop_pct: float,
    wanted: Sequence[str],
    image_size: int | None = None,
    measured: Mapping[int, ProbeScore] | None = None,
) -> list[Choice]:
    """The choices for the config keys in `wanted` (those left `auto`), deterministic for a given folder.

    `train_sides` are the shorter sides of (a sample of) the `train_count` training images
    (`ImageFolderDataModule.short_sides`); `measured` the probe at each of `resolution_candidates`. Crops are
    judged against the resolution the run uses: `image_size` when given, else the chosen one.
    """
    if not wanted:
        return []
    median = statistics.median(train_sides or [native])
    resolution = choose_resolution(median, native, measured)
    used = image_size or resolution.value
    choices = [resolution, *choose_crops(median, used, train_count, weights_crop_pct)]
    return [choice for choice in choices if choice.key in wanted]


# Domain shift (below) at or under NEAR is ImageNet-like photos; at or over FAR, data like 8 px digits on black.
NEAR, FAR = 0.2, 0.8
# lr_mult (head LR / first backbone group's LR) at those two ends, log-linear in between.
GENTLE_LR_MULT, BOLD_LR_MULT = 100.0, 4.0


@torch.no_grad()
def domain_shift(backbone: nn.Module, images: torch.Tensor) -> float | None:
    """How far `images` sit from what the backbone's BatchNorm layers saw in pretraining.

    Per BatchNorm layer, the symmetric KL divergence between each channel's Gaussian under the running statistics
    and under these images' batch statistics, its median over channels (robust to dead channels), averaged over
    layers. About 0.1 for photos, 0.3 for grayscale photo patches, 0.85 for 8 px handwritten digits. `None` for a
    backbone without BatchNorm (a ViT), where the running statistics say nothing.
    """
    layers = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return None
    values: list[float] = []

    def measure(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
        x = inputs[0].detach().float().transpose(0, 1).flatten(1)
        mean, var = x.mean(1), x.var(1) + 1e-3
        run_mean, run_var = module.running_mean.float(), module.running_var.float() + 1e-3
        kl = 0.5 * (var / run_var + run_var / var + (mean - run_mean) ** 2 * (1 / run_var + 1 / var)) - 1
        values.append(float(kl.median()))

    modes = [m.training for m in backbone.modules()]
    hooks = [layer.register_forward_hook(measure) for layer in layers]
    try:
        backbone.eval()(images.to(next(backbone.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in zip(backbone.modules(), modes, strict=True):
            module.training = training
    return sum(values) / len(values)


def choose_lr_mult(shift: float | None, default: float) -> Choice:
    """How hard to move the backbone: gently near ImageNet, boldly far from it.

    Near ImageNet the pretrained features already fit, and a strong backbone LR on a few hundred images distorts
    them (fastai's `fine_tune` moves the body at 1e-5 and wins there); far from it (digits) they must change, and
    a backbone LR near the head's wins by 8 points (../shared/FINDINGS.md). `lr_mult` (the head's LR over the first
    backbone group's; groups in between spread geometrically) goes log-linearly from 100 at shift <= 0.2 to 4 at
    shift >= 0.8.
    """
    key = "model.lr_mult"
    if shift is None:
        return Choice(key, default, "the backbone has no BatchNorm statistics to measure the domain shift against")
    position = min(1.0, max(0.0, (shift - NEAR) / (FAR - NEAR)))
    value = round(GENTLE_LR_MULT * (BOLD_LR_MULT / GENTLE_LR_MULT) ** position, 1)
    where, how = ("near ImageNet", "gently") if position < 0.5 else ("far from ImageNet", "boldly")
    return Choice(key, value, f"the training images' BatchNorm statistics shift is {shift:.2f} ({where}; 0.2 "
                  f"photos .. 0.8 digits): the backbone moves {how}")  # fmt: skip
