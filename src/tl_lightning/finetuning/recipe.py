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

from tl_lightning.finetuning.measure import MirrorScore, ProbeScore, best_resolution
from tl_lightning.models.metrics import beats

# Input sizes tried for images smaller than the weights' resolution. BiT's HyperRule (Kolesnikov et al. 2020)
# resizes images under 96 px to 160 and crops 128; fastai's users train at 224. Rather than fix one, the recipe
# measures each (`finetuning.measure.probe_at_resolutions`) and keeps the weights' own unless the data clearly
# prefers a smaller one.
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
    """The weights' own resolution for images at least that large; for smaller ones too, unless a smaller size's
    cross-validated probe on the training images beats it by more than one standard error
    (`finetuning.measure.best_resolution`)."""
    key = "model.image_size"
    if median_side >= native or not measured:
        because = f"the training images (median short side {median_side:.0f} px) are at least the weights' {native} px"
        return Choice(key, native, because)
    size = best_resolution(measured, native)
    top = max(measured.values(), key=lambda score: score.accuracy)
    scores = ", ".join(f"{s} px {m.accuracy:.3f}" for s, m in sorted(measured.items()))
    if size == native:
        verdict = f"no smaller size beats the weights' own {native} px by more than a standard error"
    else:
        verdict = f"a smaller size beats {native} px by more than a standard error: the smallest within one of the best"
    because = (
        f"the training images are small (median short side {median_side:.0f} px) and a cross-validated linear probe "
        f"of their frozen features scores {scores} (standard error {top.stderr:.3f}): {verdict}"
    )
    return Choice(key, size, because)


def choose_eval_view(
    median_side: float,
    resolution: int,
    weights_crop_pct: float,
    whole: ProbeScore | None = None,
    centre: ProbeScore | None = None,
) -> list[Choice]:
    """Evaluate on the whole image squashed to the input square (`crop_mode` squash, `crop_pct` 1), as fastai's
    `Resize` and BiT's eval do; the weights' centre crop only where the images are at least the input resolution
    and a cross-validated probe of the training images under that crop beats the whole image's by more than one
    standard error. timm's crop assumes an ImageNet photo with the subject in the middle and a border to spare,
    which images far from ImageNet seldom have; photos framed like ImageNet's can still earn it."""
    keys = ("model.crop_pct", "model.crop_mode")
    if median_side < resolution:
        because = "small images have no border to spare: evaluate on the whole image"
        return [Choice(keys[0], 1.0, because), Choice(keys[1], "squash", because)]
    if whole is None or centre is None:
        because = "the whole image is evaluated (fastai, BiT) unless a measured centre crop beats it"
        return [Choice(keys[0], 1.0, because), Choice(keys[1], "squash", because)]
    measured = (
        f"a cross-validated linear probe scores {whole.accuracy:.3f} +- {whole.stderr:.3f} on the whole image "
        f"and {centre.accuracy:.3f} on the weights' {weights_crop_pct:g} centre crop"
    )
    if beats(centre.accuracy, whole.accuracy, whole.stderr):
        because = measured + ": the crop is better by more than a standard error"
        return [Choice(keys[0], weights_crop_pct, because), Choice(keys[1], "center", because)]
    because = measured + ": the crop is not better by more than a standard error"
    return [Choice(keys[0], 1.0, because), Choice(keys[1], "squash", because)]


def choose_train_crop(median_side: float, resolution: int, train_images: int, eval_view: str = "squash") -> Choice:
    """The random crop's smallest area, paired with what evaluation sees. Random crops magnify the subject during
    training; evaluating on the whole image shows it smaller than training did (Touvron et al. 2019, "Fixing the
    train-test resolution discrepancy"), so a whole-image eval (`eval_view` squash) goes with mild crops, 75-100%
    of the area (fastai pairs its whole-image `Resize` with a zoom of at most 1.1). timm's centre crop goes with
    its protocol: crops down to 35% of the area on a few thousand images, ImageNet's 8% from `MANY_IMAGES` on.
    Small images (under the input resolution) always get mild crops: the whole image is the subject."""
    key = "data.train_transform.crop_scale"
    if median_side < resolution:
        because = "random crops of small images keep at least 75% of the area, so the subject stays in view"
        return Choice(key, [0.75, 1.0], because)
    if eval_view == "squash":
        because = (
            "evaluation sees the whole image, so random crops keep at least 75% of it (train and test scales agree)"
        )
        return Choice(key, [0.75, 1.0], because)
    if train_images >= MANY_IMAGES:
        because = f"{train_images} training images (>= {MANY_IMAGES}) carry ImageNet-strength random crops"
        return Choice(key, [0.08, 1.0], because)
    because = f"{train_images} training images (< {MANY_IMAGES}) and a centre-cropped eval: crops keep at least 35%"
    return Choice(key, [0.35, 1.0], because)


def automatic_choices(
    train_sides: Sequence[int],
    train_count: int,
    native: int,
    stride: int,
    weights_crop_pct: float,
    wanted: Sequence[str],
    image_size: int | None = None,
    measured: Mapping[int, ProbeScore] | None = None,
    centre: ProbeScore | None = None,
    crop_mode: str | None = None,
) -> list[Choice]:
    """The choices for the config keys in `wanted` (those left `auto`), deterministic for a given folder.

    `train_sides` are the shorter sides of (a sample of) the `train_count` training images
    (`ImageFolderDataModule.short_sides`); `measured` the whole image's probe at each of `resolution_candidates`
    (and at the resolution used, for large images); `centre` the probe under the weights' centre crop at that
    resolution. Crops are judged against the resolution the run uses: `image_size` when given, else the chosen one,
    and the train crop pairs with the eval view the run uses: `crop_mode` when given, else the chosen one.
    """
    if not wanted:
        return []
    median = statistics.median(train_sides or [native])
    resolution = choose_resolution(median, native, measured)
    used = image_size or resolution.value
    whole = (measured or {}).get(used)
    view = choose_eval_view(median, used, weights_crop_pct, whole, centre)
    mode = crop_mode or next(choice.value for choice in view if choice.key == "model.crop_mode")
    choices = [resolution, *view, choose_train_crop(median, used, train_count, mode)]
    return [choice for choice in choices if choice.key in wanted]


def choose_hflip(features: MirrorScore, pixels: MirrorScore) -> Choice:
    """Random horizontal flips for half the training images unless mirroring changes what an image shows.

    A flip is free augmentation only where a mirrored image belongs to the same class: photos, textures, faces,
    galaxies; on digits and text it teaches the model that a mirrored 2 is a 2. Two measurements must agree before
    flips go: a probe of the frozen features and an SVM on the pixels, each fitted on upright training images,
    both score the held-out ones lower mirrored, by more than the difference's standard error. Either alone
    misleads: the pixels are not mirror-invariant at all, so they flag any set whose images share a layout, and
    ImageNet's features, nearly mirror-invariant on photos, drift on images far from them (whose orientation may
    be arbitrary). fastai and timm flip by default and leave turning it off to the user.
    """
    key = "data.train_transform.hflip"

    def lower(score: MirrorScore) -> bool:
        return beats(score.upright, score.mirrored, score.stderr)

    measured = (
        f"fitted on upright training images, a linear probe of the frozen features scores {features.upright:.3f} "
        f"on held-out ones and {features.mirrored:.3f} on them mirrored (standard error of the difference "
        f"{features.stderr:.3f}), an SVM on the pixels {pixels.upright:.3f} and {pixels.mirrored:.3f} "
        f"({pixels.stderr:.3f})"
    )
    if lower(features) and lower(pixels):
        return Choice(key, 0.0, measured + ": both lower, so mirroring changes what they show: no flips")
    return Choice(key, 0.5, measured + ": not both lower, so a mirrored image shows the same class: half are flipped")


# lr_mult (head LR / first backbone group's) when the frozen features fit the task, and when they do not.
GENTLE_LR_MULT, BOLD_LR_MULT = 100.0, 4.0


def choose_backbone_lr(features: ProbeScore, pixels: ProbeScore) -> tuple[Choice, Choice]:
    """How hard to move the backbone (`model.lr_mult`, `model.lr_spread`), from whether its frozen features beat the
    raw pixels on this data.

    Where they do, they already fit, and a strong backbone LR on a few hundred images distorts them (Kumar et al.
    2022): the whole backbone moves at head LR / 100, as fastai's `fine_tune` moves a timm body. Where an SVM on
    the pixels matches or beats them (8 px digits), the features do not fit and have to be rewritten: head LR / 4
    for the first group, spread geometrically up to the head's, so the top blocks move most.
    """
    measured = f"a linear probe of the frozen features scores {features.accuracy:.3f} against {pixels.accuracy:.3f} "
    measured += "for an SVM on the pixels: "
    if features.accuracy > pixels.accuracy:
        because = measured + "the pretrained features fit, so the backbone moves gently"
        return (
            Choice("model.lr_mult", GENTLE_LR_MULT, because),
            Choice("model.lr_spread", "flat", because + ", every group of it at the same LR"),
        )
    because = measured + "the pretrained features do not fit, so the backbone is rewritten"
    return (
        Choice("model.lr_mult", BOLD_LR_MULT, because),
        Choice("model.lr_spread", "geometric", because + ", its top blocks most"),
    )


# fastai's head pools the last feature map by average and by maximum side by side (`AdaptiveConcatPool2d`): the
# average says how much of the image shows a pattern, the maximum whether any part shows it strongly, which a small
# subject in a large frame leaves to the maximum alone. timm's `fastcatavgmax` computes the same numbers as its
# `catavgmax` with `mean` and `amax`, which every export format has (ExecuTorch's has no adaptive max pooling).
CONCAT_POOL = "fastcatavgmax"


def choose_pool(backbone: str, misfit: str | None, given: str | None = None) -> Choice:
    """Average and max pooling side by side where `backbone`'s pretrained weights take it unchanged (`misfit` is
    `None`, from `models.backbones.pool_misfit`); the weights' own pooling where they do not, or where the backbone's
    own arguments already name one (`given`: `backbone.kwargs.global_pool`).

    >>> choose_pool("resnet50", None).value
    'fastcatavgmax'
    >>> print(choose_pool("vit_small_patch16_224", "only avg or token pooling").because)
    vit_small_patch16_224 keeps its own pooling: fastcatavgmax does not fit it (only avg or token pooling)
    """
    key = "model.pool"
    if given is not None:
        return Choice(key, None, f"backbone.kwargs.global_pool={given} already sets {backbone}'s pooling")
    if misfit is not None:
        return Choice(key, None, f"{backbone} keeps its own pooling: {CONCAT_POOL} does not fit it ({misfit})")
    because = (
        f"the last feature map pooled by average and by maximum side by side (fastai's head) lets the probe and the "
        f"head read both how much of an image shows a pattern and where it shows most, and {backbone}'s pretrained "
        "weights take it unchanged"
    )
    return Choice(key, CONCAT_POOL, because)
