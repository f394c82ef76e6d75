"""The LightningModule: a timm backbone by name, a new head, discriminative LRs and per-stage metrics."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric, Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from tl_lightning.backbones import create_backbone
from tl_lightning.drift import InputStatistics
from tl_lightning.groups import LayerGroup, build_param_groups, discriminative_lrs, layer_groups
from tl_lightning.heads import create_head
from tl_lightning.losses import (
    balanced_class_weights,
    create_mixup,
    distillation_loss,
    focal_loss,
    initial_class_weights,
)
from tl_lightning.schedules import warmup_cosine
from tl_lightning.teacher import convert_batch, load_teacher

log = logging.getLogger(__name__)

# Per-class accuracy is logged as one scalar per class; past this many classes it would swamp the logger,
# so it is kept only in `per_class_accuracy`.
PER_CLASS_LOG_LIMIT = 50


class TransferClassifier(pl.LightningModule):
    """A pretrained timm backbone with a new classification head.

    The backbone is given by name and every argument is saved as a hyperparameter, so
    `TransferClassifier.load_from_checkpoint(path)` rebuilds the model with nothing else.

    Args:
        backbone: timm model name.
        num_classes: number of classes of the new head.
        class_names: names in class-index order; checked against any checkpoint loaded into this module.
        pretrained: start from pretrained weights (see `create_backbone`).
        weights_file: local weights file or `package:NAME` to use instead of timm's hub.
        backbone_kwargs: extra `timm.create_model` arguments (e.g. `drop_path_rate`).
        head_hidden: hidden sizes of an MLP head; empty for a linear head.
        head_dropout: dropout before the head's last linear layer.
        lr: the head's learning rate; backbone groups get less (see `lr_mult`).
        lr_mult: ratio of the head's LR to the first backbone group's, spread geometrically between.
        lr_factors: explicit per-group LR factors (backbone groups input -> output, then the head), instead of
            `lr_mult`'s geometric spread; each group's LR is `lr * factor`.
        label_smoothing: label smoothing of the loss.
        class_weights: per-class loss weights in class-index order, or ``"balanced"`` for inverse-frequency
            weights (mean 1) computed from the datamodule's training split at `setup`.
        loss: ``"cross_entropy"`` or ``"focal"`` (for heavy imbalance; see `focal_gamma`).
        focal_gamma: focusing exponent of the focal loss.
        mixup_alpha, cutmix_alpha: batch-level Mixup / CutMix (timm's `Mixup`, label-smoothing aware); 0 is off.
            Training batches then have soft targets, so train accuracy is not logged.
        mixup_prob: probability of mixing a batch.
        teacher_checkpoint: a `TransferClassifier` checkpoint to distil from (same classes). The teacher is frozen,
            fed the batch converted to its own size and normalisation, and kept out of this module's checkpoints.
        distill_temperature, distill_alpha: softening temperature, and the weight of the soft (teacher) term.
        image_size: input resolution, overriding the weights' native one (e.g. 64 for 8x8 digits).
        crop_pct: eval centre-crop fraction, overriding the weights' own.
        channels_last: keep weights and image batches in channels-last memory layout (faster convolutions with
            AMP on recent GPUs and on CPUs with oneDNN).
        compile: compile the backbone with `torch.compile` when the trainer sets the model up (in place, so
            checkpoint keys do not change); `compile_options` are passed on (e.g. ``{"mode": "max-autotune"}``).
        optimizer: called with the named param groups; a partial carries e.g. `weight_decay`.
        scheduler: called with the optimizer (and `total_steps` when it takes one, then stepped per batch;
            otherwise per epoch, with `val/loss` monitored for `ReduceLROnPlateau`). `None` for constant LRs.

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
        backbone_kwargs: dict[str, Any] | None = None,
        head_hidden: Sequence[int] = (),
        head_dropout: float = 0.0,
        lr: float = 1e-3,
        lr_mult: float = 10.0,
        lr_factors: Sequence[float] | None = None,
        label_smoothing: float = 0.1,
        class_weights: Sequence[float] | str | None = None,
        loss: str = "cross_entropy",
        focal_gamma: float = 2.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        teacher_checkpoint: str | None = None,
        distill_temperature: float = 4.0,
        distill_alpha: float = 0.7,
        image_size: int | None = None,
        crop_pct: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_options: dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        scheduler: Callable[..., Any] | None = warmup_cosine,
    ) -> None:
        super().__init__()
        class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}.")
        # Reads the locals, so the normalised class_names is saved. The optimizer and scheduler factories are
        # left out: checkpoints must load with `weights_only=True`, and inference never needs them.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        created = create_backbone(backbone, pretrained, weights_file, **(backbone_kwargs or {}))
        self.backbone = created.model
        self.head = create_head(created.num_features, num_classes, head_hidden, head_dropout)
        self.weights_info = created.weights
        self.data_config = _override_data_config(created.data_config, image_size, crop_pct)
        if loss not in ("cross_entropy", "focal"):
            raise ValueError(f"loss must be 'cross_entropy' or 'focal', got {loss!r}.")
        self.mixup = create_mixup(mixup_alpha, cutmix_alpha, mixup_prob, label_smoothing, num_classes)
        # A list, so the teacher is not registered: out of parameters(), state_dict() and the optimizer.
        self._teacher = [load_teacher(teacher_checkpoint, class_names)] if teacher_checkpoint else []
        if self._teacher and self.mixup is not None:
            raise ValueError("Distillation with Mixup/CutMix is not supported: turn one of them off.")
        if self.mixup is not None and (loss == "focal" or class_weights is not None):
            raise ValueError("Mixup/CutMix make soft targets: use them without class_weights, with cross_entropy.")
        # Always a buffer (ones = unweighted), so checkpoints have the same keys whatever the weighting.
        self.register_buffer("class_weight", initial_class_weights(class_weights, num_classes))
        # Temperature scaling (`calibration.py`), fitted on validation after training; 1 until then.
        self.register_buffer("temperature", torch.tensor(1.0))
        # Statistics of the training inputs, for prediction's drift warning (`drift.py`); set at fit.
        self.input_statistics: InputStatistics | None = None
        self.train_metrics = _stage_metrics(num_classes, "train")
        self.val_metrics = _stage_metrics(num_classes, "val")
        self.test_metrics = _stage_metrics(num_classes, "test")
        self.val_acc_best = MaxMetric()
        # Images scored per evaluation, summed over ranks: with DDP, proof that each counts exactly once.
        self.samples = torch.nn.ModuleDict({"val": SumMetric(), "test": SumMetric()})
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.per_class_accuracy: dict[str, torch.Tensor] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:  # here rather than a batch hook: a DataModule's batch hooks would win
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images through backbone and head; `(N, D)` backbone features (from `FrozenFeatureCache`) through the head."""
        return self.head(x) if x.ndim == 2 else self(x)

    def layer_groups(self) -> list[LayerGroup]:
        """Backbone groups input -> output, then the head: the unit of freezing and of learning rate."""
        head = LayerGroup("head", list(self.head.named_parameters(prefix="head")), [])
        return [*layer_groups(self.backbone, prefix="backbone."), head]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, temperature-scaled: what prediction and export return."""
        return (self(x) / self.temperature).softmax(dim=-1)

    def configure_model(self) -> None:
        """Memory layout and compilation: once per trainer run, before the strategy moves or wraps the model."""
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and not getattr(self.backbone, "_compiled_call_impl", None):
            self.backbone.compile(**(self.hparams.compile_options or {}))

    def setup(self, stage: str) -> None:
        # ddp_spawn on a CPU hands the module to each process through shared memory. Lightning un-shares
        # parameters and buffers (#18238), not torchmetrics states, which every process would then add to at
        # once (each sample counted world-size times). reset() gives each process states of its own.
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if stage == "fit" and hasattr(datamodule, "input_statistics"):
            self.input_statistics = datamodule.input_statistics()
        if self.hparams.class_weights == "balanced" and stage == "fit":
            if datamodule is None or not hasattr(datamodule, "class_counts"):
                raise ValueError("class_weights='balanced' needs a datamodule with class_counts(); give a list.")
            self.class_weight.copy_(balanced_class_weights(datamodule.class_counts()))

    def on_fit_start(self) -> None:
        for teacher in self._teacher:
            teacher.to(self.device)

    def to_teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """Re-normalise and resize a batch prepared for this model into what the teacher was trained on."""
        return convert_batch(x, self.data_config, self._teacher[0].data_config)

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        smoothing = self.hparams.label_smoothing
        if self.hparams.loss == "focal":
            return focal_loss(logits, target, self.class_weight, self.hparams.focal_gamma, smoothing)
        return F.cross_entropy(logits, target, weight=self.class_weight, label_smoothing=smoothing)

    def _shared_step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self._logits(x)
        loss = self.criterion(logits, y)
        if stage == "train" and self._teacher:
            with torch.no_grad():
                teacher_logits = self._teacher[0](self.to_teacher_input(x))
            temperature, alpha = self.hparams.distill_temperature, self.hparams.distill_alpha
            loss = distillation_loss(logits, teacher_logits, loss, temperature, alpha)
        getattr(self, f"{stage}_metrics").update(logits, y)
        if stage != "train":
            self.samples[stage].update(len(y))
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "test", batch_size=len(y),
                 sync_dist=stage != "train")  # fmt: skip
        if stage == "test":
            self.confusion.update(logits, y)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.mixup is None:
            return self._shared_step(batch, "train")
        x, y = batch
        mixed, soft_targets = self.mixup(x, y)
        loss = torch.sum(-soft_targets * self(mixed).log_softmax(dim=-1), dim=-1).mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.probabilities(x)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def on_train_epoch_end(self) -> None:
        if self.mixup is None:
            self._log_stage("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log_stage("val")
        if not self.trainer.sanity_checking:
            self.val_acc_best.update(values["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_start(self) -> None:
        self.confusion.reset()

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    def _log_stage(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        per_class = values.pop(f"{stage}/acc_class")
        self.per_class_accuracy[stage] = per_class.cpu()
        self.log_dict(values, prog_bar=stage == "val")
        if stage != "train":
            self.log(f"{stage}/samples", self.samples[stage].compute())
            self.samples[stage].reset()
        if len(per_class) <= PER_CLASS_LOG_LIMIT:
            self.log_dict({f"{stage}/acc_class/{n}": v for n, v in zip(self.class_names, per_class, strict=True)})
        return values

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.layer_groups()
        lrs = discriminative_lrs(len(groups), self.hparams.lr, self.hparams.lr_mult)
        if self.hparams.lr_factors is not None:
            factors = list(self.hparams.lr_factors)
            if len(factors) != len(groups):
                raise ValueError(
                    f"model.lr_factors has {len(factors)} entries for {len(groups)} groups: "
                    f"{[g.name for g in groups]}. Give one factor per group (`python -m tl_lightning.groups NAME`)."
                )
            lrs = [self.hparams.lr * f for f in factors]
        optimizer = self.optimizer_factory(build_param_groups(groups, lrs))
        factory = self.scheduler_factory
        if factory is None:
            return {"optimizer": optimizer}
        if "total_steps" in inspect.signature(factory).parameters:
            scheduler = factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
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

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, **kwargs: Any) -> TransferClassifier:  # type: ignore[override]
        """Rebuild from a checkpoint without fetching the initial weights again (the checkpoint has them)."""
        kwargs.setdefault("pretrained", False)
        kwargs.setdefault("teacher_checkpoint", None)  # a trained student needs no teacher
        return super().load_from_checkpoint(checkpoint_path, **kwargs)


def check_same_classes(saved: Sequence[str], current: Sequence[str]) -> None:
    """Raise a `ValueError` naming the differences when a checkpoint's classes are not this run's."""
    if list(saved) == list(current):
        return
    missing = sorted(set(saved) - set(current))
    extra = sorted(set(current) - set(saved))
    detail = "same names, other order"
    if missing or extra:
        detail = f"only in the checkpoint: {missing}; only in this run: {extra}"
    raise ValueError(
        f"The checkpoint was trained on classes {list(saved)} but this run has {list(current)} ({detail}). "
        "Resume only with the same class folders; to reuse its backbone for new classes, start a new run with "
        "backbone.weights_file pointing at exported backbone weights."
    )


def _stage_metrics(num_classes: int, stage: str) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "acc_macro": MulticlassAccuracy(num_classes, average="macro"),
        "acc_class": MulticlassAccuracy(num_classes, average=None),
    }
    if stage == "test":
        metrics |= {
            "precision_macro": MulticlassPrecision(num_classes, average="macro"),
            "recall_macro": MulticlassRecall(num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        }
    return MetricCollection(metrics, prefix=f"{stage}/")


def _override_data_config(config: dict[str, Any], image_size: int | None, crop_pct: float | None) -> dict[str, Any]:
    config = dict(config)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    if crop_pct is not None:
        config["crop_pct"] = crop_pct
    return config
