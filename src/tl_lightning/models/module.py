"""The LightningModule: a timm backbone by name, a new head, discriminative LRs and per-stage metrics."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import CatMetric, MaxMetric, MeanMetric, Metric, SumMetric

from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.drift import InputStatistics
from tl_lightning.data.transforms import CROP_MODES, DataConfig
from tl_lightning.models.backbones import build_kwargs, create_backbone, with_overrides
from tl_lightning.models.checkpoint import (
    check_checkpoint_file,
    check_same_classes,
    check_same_shapes,
    read_checkpoint,
)
from tl_lightning.models.features import Features
from tl_lightning.models.groups import SPREADS, LayerGroup, build_param_groups, discriminative_lrs, layer_groups
from tl_lightning.models.heads import create_head, scaled_softmax
from tl_lightning.models.losses import create_mixup, distillation_loss, focal_loss, mix_batch
from tl_lightning.models.lr_schedules import warmup_cosine
from tl_lightning.models.metrics import (
    MIN_ACCURACY_IMAGES,
    calibration_temperature,
    per_class_scalars,
    selection_score,
    stage_metrics,
)
from tl_lightning.models.options import (
    Distillation,
    Imbalance,
    Performance,
    Regularization,
    as_dict,
    check_combinations,
    coerce,
)
from tl_lightning.models.teacher import convert_batch
from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)


class TransferClassifier(pl.LightningModule):
    """A pretrained timm backbone with a new classification head.

    The backbone is given by name and every argument is saved as a hyperparameter, so `load_from_checkpoint(path)`
    rebuilds the model with nothing else. Common options are flat; the rest come in small groups, each given as
    the dataclass (`Regularization`, `Imbalance`, `Distillation`, `Performance`) or a plain dict.

    Args:
        backbone: timm model name.
        num_classes: number of classes of the new head.
        class_names: names in class-index order; checked against any checkpoint loaded into this module.
        pretrained: start from pretrained weights (see `create_backbone`).
        weights_file: local weights file or `package:NAME` to use instead of timm's hub.
        backbone_kwargs: extra `timm.create_model` arguments (e.g. `drop_path_rate`).
        pool: how the backbone pools its last feature map (timm's `global_pool`, e.g. ``"fastcatavgmax"``: average
            and maximum side by side, fastai's head's pooling); `None` keeps the weights' own. The recipe chooses it
            (`finetuning.recipe.choose_pool`).
        image_size: input resolution, overriding the weights' native one (e.g. 64 for 8x8 digits).
        crop_pct: eval centre-crop fraction, overriding the weights' own.
        crop_mode: how the eval resize treats the aspect ratio, overriding the weights' own: ``"center"`` (shorter
            side) or ``"squash"`` (the whole image to the square; `data.transforms.eval_transform`).
        head_hidden: hidden sizes of an MLP head; empty for a linear head.
        head_dropout: dropout before the head's last linear layer, or one rate per linear layer (`create_head`).
        head_norm: a `BatchNorm1d` before each of the head's linear layers (fastai's head; see `create_head`).
        lr: the head's learning rate; backbone groups get less (see `lr_mult`).
        lr_mult: ratio of the head's LR to the first backbone group's.
        lr_spread: how the backbone groups' LRs go from `lr / lr_mult` to the head's: ``"geometric"`` (each
            group deeper gets more) or ``"flat"`` (every backbone group at `lr / lr_mult`).
        score_accuracy_from: validation images from which `val/score` (what checkpoints, early stopping and the probe
            floor select on) is accuracy with ties broken by loss; on fewer, it is the negative loss of the model as
            the run will calibrate it (`metrics.selection_score`, `selection_losses`); 0 always selects on accuracy.
        lr_factors: explicit per-group LR factors (backbone groups input -> output, then the head), instead of
            `lr_mult`'s geometric spread; each group's LR is `lr * factor`.
        regularization: label smoothing, Mixup / CutMix (`Regularization`, or a dict of its fields).
        imbalance: class weights and the loss (`Imbalance`).
        distillation: a teacher checkpoint to distil from (`Distillation`).
        performance: channels-last and `torch.compile` (`Performance`).
        optimizer: called with the named param groups; a partial carries e.g. `weight_decay`.
        scheduler: called with the optimizer (and `total_steps`, with `steps_per_epoch` if it takes that too, when
            it takes one, then stepped per batch;
            otherwise per epoch, with `val/loss` monitored for `ReduceLROnPlateau`). `None` for constant LRs.

    Attributes:
        data_config: the preprocessing the weights expect; `connect_data` hands it to the datamodule.
        input_statistics: the training inputs' statistics (`connect_data`), for prediction's drift warning.
        teacher: the distillation teacher or `None`; not a submodule, so never in `state_dict()`.

    >>> model = TransferClassifier("test_resnet", num_classes=3, pretrained=False)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        pretrained: bool = True,
        weights_file: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        pool: str | None = None,
        image_size: int | None = None,
        crop_pct: float | None = None,
        crop_mode: str | None = None,
        head_hidden: Sequence[int] = (),
        head_dropout: float | Sequence[float] = 0.0,
        head_norm: bool = False,
        lr: float = 1e-3,
        lr_mult: float = 10.0,
        lr_spread: str = "geometric",
        score_accuracy_from: int = MIN_ACCURACY_IMAGES,
        lr_factors: Sequence[float] | None = None,
        regularization: Regularization | Mapping[str, Any] | None = None,
        imbalance: Imbalance | Mapping[str, Any] | None = None,
        distillation: Distillation | Mapping[str, Any] | None = None,
        performance: Performance | Mapping[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        scheduler: Callable[..., Any] | None = warmup_cosine,
    ) -> None:
        super().__init__()
        if lr_spread not in SPREADS:
            raise BadValue(f"model.lr_spread must be one of {', '.join(SPREADS)}, got {lr_spread!r}.")
        if crop_mode not in (None, *CROP_MODES):
            raise BadValue(f"model.crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}.")
        if pool is not None and (backbone_kwargs or {}).get("global_pool") is not None:
            raise BadValue(
                f"Both model.pool={pool!r} and backbone.kwargs.global_pool={backbone_kwargs['global_pool']!r} are "
                "set: give the pooling once, as model.pool."
            )
        class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise BadValue(f"{len(class_names)} class_names given for num_classes={num_classes}.")
        self.regularization = coerce(Regularization, regularization)
        self.imbalance = coerce(Imbalance, imbalance)
        self.distillation = coerce(Distillation, distillation)
        self.performance = coerce(Performance, performance)
        # save_hyperparameters reads the locals: normalised class names and plain-dict options (no factories, which
        # inference never needs) keep checkpoints loadable with `weights_only=True`.
        regularization, imbalance = as_dict(self.regularization), as_dict(self.imbalance)
        distillation, performance = as_dict(self.distillation), as_dict(self.performance)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        created = create_backbone(backbone, pretrained, weights_file, **build_kwargs(backbone_kwargs, pool))
        self.backbone = created.model
        self.head = create_head(created.num_features, num_classes, head_hidden, head_dropout, head_norm)
        self.weights_info = created.weights
        self.data_config: DataConfig = with_overrides(created.data_config, image_size, crop_pct, crop_mode)
        reg = self.regularization
        self.mixup = create_mixup(reg.mixup_alpha, reg.cutmix_alpha, reg.mixup_prob, reg.label_smoothing, num_classes)
        check_combinations(self.regularization, self.imbalance, self.distillation)
        # A list, so the teacher is not registered: out of parameters(), state_dict() and the optimizer.
        teacher = self.distillation.teacher_checkpoint
        self._teachers = [self._load_teacher(teacher)] if teacher else []
        self.register_buffer("class_weight", _class_weight(self.imbalance.class_weights, num_classes))
        self.register_buffer("temperature", torch.tensor(1.0))  # fitted on validation after training
        self.input_statistics: InputStatistics | None = None
        self.train_metrics = stage_metrics(num_classes, "train")
        self.val_metrics = stage_metrics(num_classes, "val")
        self.test_metrics = stage_metrics(num_classes, "test")
        self.val_acc_best = MaxMetric()  # in the checkpoint: a resumed run keeps the best of the epochs before it
        self.val_acc_best.persistent(True)
        # Images scored per evaluation, summed over ranks: with DDP, proof that each counts exactly once.
        self.samples = torch.nn.ModuleDict({"val": SumMetric(), "test": SumMetric()})
        self.val_loss = MeanMetric()  # for val/score
        # The validation logits, for val/score's calibrated loss, while the split is under `score_accuracy_from`
        # images (past that val/score is accuracy, and a large split's logits are not kept). Gathered over ranks.
        # A diverged model's NaN logits are kept, as infinities (CatMetric would drop them), so its loss is NaN: the
        # worst score.
        self.val_logits, self.val_targets = CatMetric(nan_strategy=float("inf")), CatMetric()

    def connect_data(self, datamodule: ImageFolderDataModule) -> None:
        """The one seam between model and data, called once before fitting: the datamodule gets this model's
        preprocessing, and the model keeps statistics of the training inputs (saved in checkpoints, so prediction
        can warn about unlike inputs). A datamodule whose classes are not the model's is refused.

        `trainer.fit(model, datamodule)` calls it by itself (the datamodule asks at `setup` when nobody has)."""
        if list(datamodule.class_names) != self.class_names:
            raise BadValue(
                f"The datamodule's classes {list(datamodule.class_names)} (from '{datamodule.root}') are not the "
                f"model's {self.class_names}. Build the model with num_classes=datamodule.num_classes and "
                "class_names=datamodule.class_names."
            )
        datamodule.data_config = DataConfig(**self.data_config)
        if self.input_statistics is None:
            self.input_statistics = datamodule.input_statistics()

    def _load_teacher(self, path: str) -> TransferClassifier:
        """The distillation teacher from `path`, in eval mode with no trainable parameter, checked for our classes."""
        teacher = type(self).load_from_checkpoint(check_checkpoint_file(path, "Teacher checkpoint"), map_location="cpu")
        check_same_classes(teacher.class_names, self.class_names)
        return teacher.eval().requires_grad_(False)

    @property
    def teacher(self) -> TransferClassifier | None:
        return self._teachers[0] if self._teachers else None

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.performance.channels_last:  # here rather than a batch hook: a DataModule's batch hooks would win
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

    def _logits(self, x: torch.Tensor | Features) -> torch.Tensor:
        """Images through backbone and head; a `Features` batch (from `FrozenFeatureCache`) through the head only."""
        return self.head(x.tensor) if isinstance(x, Features) else self(x)

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups input -> output, then the head: the unit of freezing and of learning rate."""
        head = LayerGroup("head", list(self.head.named_parameters(prefix="head")), [])
        return [*layer_groups(self.backbone, prefix="backbone."), head]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, temperature-scaled: what prediction and export return."""
        return scaled_softmax(self(x), self.temperature)

    def configure_model(self) -> None:
        """Memory layout and compilation: once per trainer run, before the strategy moves or wraps the model."""
        if self.performance.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.performance.compile and not getattr(self.backbone, "_compiled_call_impl", None):
            self.backbone.compile(**dict(self.performance.compile_options))

    def setup(self, stage: str) -> None:
        # ddp_spawn on CPU shares torchmetrics states between processes (Lightning #18238 un-shares only weights).
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def to_teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """Re-normalise and resize a batch prepared for this model into what the teacher was trained on."""
        return convert_batch(x, self.data_config, self.teacher.data_config)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        smoothing = self.regularization.label_smoothing
        if self.imbalance.loss == "focal":
            return focal_loss(logits, target, self.class_weight, self.imbalance.focal_gamma, smoothing, reduction)
        return F.cross_entropy(logits, target, weight=self.class_weight, label_smoothing=smoothing, reduction=reduction)

    @torch.no_grad()
    def selection_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each validation image's loss as small splits select on it (`metrics.selection_score`): the negative
        log-likelihood at the temperature the run will calibrate the kept model with, class weights applied
        (normalised so the mean is the weighted mean); where the run cannot calibrate (under 30 images, or all
        separated: `metrics.calibration_temperature`), the training loss, whose label smoothing penalises the
        overconfidence no temperature will correct.

        Why calibrated: it is the loss the kept model will have, and it compares models of unlike confidence
        fairly. The training loss does not: a linear probe fitted without label smoothing is confident, a model
        fine-tuned with it is not, so the smoothed loss ranks the probe below fine-tuned epochs of any accuracy
        (docs/train.md, checkpoint selection).
        """
        logits, targets = logits.detach().float(), targets.to(logits.device)
        temperature, uncalibrated = calibration_temperature(logits, targets)
        if uncalibrated:
            losses = self.criterion(logits, targets, reduction="none")
        else:
            losses = F.cross_entropy(logits / temperature, targets, weight=self.class_weight, reduction="none")
        return losses / self.class_weight.to(losses.dtype)[targets].mean()

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self._logits(x)
        loss = self.criterion(logits, y)
        if stage == "train" and self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(self.to_teacher_input(x))
            loss = distillation_loss(
                logits, teacher_logits, loss, self.distillation.temperature, self.distillation.alpha
            )
        getattr(self, f"{stage}_metrics").update(logits, y)
        if stage != "train":
            self.samples[stage].update(len(y))
        if stage == "val":
            self.val_loss.update(loss.detach(), weight=len(y))
            if sum(len(kept) for kept in self.val_targets.value) < self.hparams.get("score_accuracy_from", 0):
                self.val_logits.update(logits.detach().float())
                self.val_targets.update(y)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage != "test",
            batch_size=len(y),
            sync_dist=stage != "train",
        )
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.mixup is None:
            return self._shared_step(batch, "train")
        x, y = batch
        mixed, soft_targets = mix_batch(self.mixup, x, y)
        loss = SoftTargetCrossEntropy()(self(mixed), soft_targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(x)

    def on_train_epoch_end(self) -> None:
        if self.mixup is None:
            self._log_stage("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_stage("val")
        loss = self.val_loss.compute()
        accuracy_from = self.hparams.get("score_accuracy_from", 0)
        samples = values["val/samples"].clamp(min=1)
        if samples < accuracy_from:  # every image's logits were kept
            targets = self.val_targets.compute().long()  # CatMetric keeps floats
            loss = self.selection_losses(self.val_logits.compute(), targets).mean()
        for metric in (self.val_loss, self.val_logits, self.val_targets):
            metric.reset()
        # What checkpoints, early stopping and the probe floor select on (`metrics.selection_score`).
        score = selection_score(values["val/acc"], loss, samples, accuracy_from)
        self.log("val/score", score, prog_bar=False)
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    @torch.no_grad()
    def score(self, logits: torch.Tensor, targets: torch.Tensor, stage: str = "test") -> dict[str, float]:
        """The metrics the `stage` loop logs, from logits computed in one pass elsewhere (a whole split, in order)."""
        metrics = stage_metrics(self.hparams.num_classes, stage)
        values = per_class_scalars(metrics(logits, targets), self.class_names, stage)
        device = self.class_weight.device
        values[f"{stage}/loss"] = self.criterion(logits.to(device), targets.to(device))
        values[f"{stage}/samples"] = torch.tensor(len(targets))
        return {name: float(value) for name, value in values.items()}

    def _log_stage(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = getattr(self, f"{stage}_metrics")
        values = per_class_scalars(metrics.compute(), self.class_names, stage)
        metrics.reset()
        if stage != "train":
            values[f"{stage}/samples"] = self.samples[stage].compute()
            self.samples[stage].reset()
        self.log_dict(values, prog_bar=stage == "val")
        return values

    def group_lrs(self) -> list[float]:
        """The learning rate of each layer group (input -> head): from `lr_factors`, or `lr_mult` and `lr_spread`."""
        groups = self.layer_groups()
        lr, factors = self.hparams.lr, self.hparams.lr_factors
        if factors is None:
            return discriminative_lrs(len(groups), lr, self.hparams.lr_mult, self.hparams.get("lr_spread", "geometric"))
        if len(factors) != len(groups):
            raise BadValue(
                f"model.lr_factors has {len(factors)} entries for {len(groups)} groups: "
                f"{[g.name for g in groups]}. Give one factor per group (`python -m tl_lightning groups NAME`)."
            )
        return [lr * f for f in factors]

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer that trains (and that the LR finder measures): every layer group from step 0, named,
        at `group_lrs()`."""
        return self.optimizer_factory(build_param_groups(self.layer_groups(), self.group_lrs()))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        factory = self.scheduler_factory
        if factory is None:
            return {"optimizer": optimizer}
        takes = inspect.signature(factory).parameters
        if "total_steps" in takes:
            total = int(self.trainer.estimated_stepping_batches)
            steps = {"total_steps": total}
            if "steps_per_epoch" in takes:  # schedules with a phase per epoch range (`FineTuneOneCycle`)
                steps["steps_per_epoch"] = max(1, total // max(1, self.trainer.max_epochs or 1))
            scheduler = factory(optimizer, **steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tl_lightning"] = {
            "weights": self.weights_info,
            "class_names": self.class_names,
            "data_config": self.data_config,
            "temperature": float(self.temperature),
            "input_statistics": self.input_statistics.to_dict() if self.input_statistics else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("tl_lightning", {})
        check_same_classes(saved.get("class_names", self.class_names), self.class_names)
        self.weights_info = saved.get("weights", self.weights_info)
        if saved.get("input_statistics"):
            self.input_statistics = InputStatistics(**saved["input_statistics"])
        # Checkpoints from before calibration existed: uncalibrated.
        checkpoint["state_dict"].setdefault("temperature", torch.tensor(1.0))
        checkpoint["state_dict"].setdefault("val_acc_best.max_value", torch.tensor(float("-inf")))
        # Here, with the dict Lightning has loaded and older checkpoints filled in: every way in (train.py, a user's
        # own `trainer.fit(ckpt_path=...)`, `load_from_checkpoint`) gets the one sentence, and the file is read once.
        check_same_shapes(checkpoint, self, self._trainer.ckpt_path if self._trainer is not None else None)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, **kwargs: Any) -> TransferClassifier:  # type: ignore[override]
        """Rebuild from a checkpoint without fetching the initial weights again (the checkpoint has them)."""
        kwargs.setdefault("pretrained", False)
        kwargs.setdefault("distillation", None)  # a trained student needs no teacher
        try:
            return super().load_from_checkpoint(checkpoint_path, **kwargs)
        except Exception:  # read again only to name what is wrong: missing, damaged, foreign, not ours
            if isinstance(checkpoint_path, (str, os.PathLike)):
                read_checkpoint(checkpoint_path)
            raise


def _class_weight(weights: Sequence[float] | None, num_classes: int) -> torch.Tensor:
    """The loss-weight buffer: the given weights, or ones, so checkpoints have the same keys whatever the weighting."""
    if weights is None:
        return torch.ones(num_classes)
    if len(weights) != num_classes:
        raise BadValue(f"class_weights has {len(weights)} entries for {num_classes} classes.")
    return torch.tensor(list(weights), dtype=torch.float)
