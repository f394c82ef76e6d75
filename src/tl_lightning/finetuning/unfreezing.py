"""Freeze a backbone's layer groups and unfreeze them, head end first, on an epoch schedule.

Differs from Lightning's `BackboneFinetuning` where that one goes silently wrong:

- every param group is in the optimizer from step 0 (built by the module from the same `layer_groups`),
  so nothing is added mid-run: schedulers created at the start (`ReduceLROnPlateau` included) see every
  group, and resume restores groups by the optimizer's own state instead of the callback's stale copy;
- frozen = `requires_grad=False`: frozen weights get no gradient, so the optimizer skips them entirely
  (no weight decay, no momentum) and they stay bit-identical;
- BatchNorm in frozen groups is held in eval mode, set again at every train epoch start and after each
  validation, so running statistics never move while frozen; so are dropout and DropPath (timm's
  `drop_path_rate`), so a frozen backbone computes the same features at every step, as the feature cache
  assumes. Unfrozen groups keep their BN statistics fixed too unless `update_bn_stats=True`: a head fitted
  on features standardised with the weights' statistics reads different features once batches of 32 re-estimate
  them (fastai's train-mode BatchNorm, AdaBN; `train_bn` with `update_bn_stats` is fastai's policy, frozen groups
  included), which costs accuracy far from ImageNet.
- the trainable set is a pure function of the epoch, so a resumed run gets it right with no saved state;
- under DDP, parameters that were frozen when DDP wrapped the model are not in its reducer, so their
  gradients would never be averaged and ranks would drift apart after the unfreeze (Lightning #20340);
  the callback all-reduces those gradients itself after each backward pass, before the fp16 GradScaler's
  inf check and clipping;
- newly unfrozen groups can be re-warmed: their LR ramps up over `rewarm_epochs`. The ramp scales the LR
  only inside `optimizer.step()` (torch step pre/post hooks), so the scheduler never sees it and any
  scheduler, chainable ones like `ReduceLROnPlateau` included, keeps its own arithmetic.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.optim import Optimizer

from tl_lightning.models.groups import LayerGroup
from tl_lightning.utils import BadValue

log = logging.getLogger(__name__)

ALL = "all"


class LayerFinetuning(BaseFinetuning):
    """Train the head on a frozen backbone, then unfreeze backbone groups on a schedule.

    Args:
        milestones: ``{epoch: n}`` - from `epoch` on, the last `n` backbone layer groups (counted from the head)
            train; ``"all"`` unfreezes every group. Before the first milestone only the head trains, and
            ``{}`` keeps the backbone frozen throughout (feature extraction).
        train_bn: keep BatchNorm scale and shift trainable in frozen groups (their statistics stay fixed unless
            `update_bn_stats`).
        update_bn_stats: let BatchNorm that trains (in unfrozen groups, and in frozen ones with `train_bn`)
            normalise with batch statistics and re-estimate its running ones (train mode): fastai's `train_bn`.
        rewarm_epochs: ramp a group's LR linearly from ~0 to its scheduled value over this many epochs after
            it is unfrozen (groups trainable from epoch 0 rely on the scheduler's own warmup); 0 turns it off.

    The module must list its layer groups, input -> output with the head last, as ``layer_groups()``
    (`TransferClassifier` does), and register every parameter with its optimizer from the start.

    >>> LayerFinetuning(milestones={5: "all"}).trainable_groups(epoch=4, num_groups=8)
    0
    """

    def __init__(
        self,
        milestones: Mapping[int, int | str] | None = None,
        train_bn: bool = False,
        update_bn_stats: bool = False,
        rewarm_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        self.milestones = _check_milestones({5: ALL} if milestones is None else milestones)
        self.train_bn = train_bn
        self.update_bn_stats = update_bn_stats
        self.rewarm_epochs = rewarm_epochs
        self._ddp_registered: set[int] | None = None
        self._hooks: list[Any] = []
        self._unfreeze_epochs: dict[str, int | None] | None = None
        self._applied: int | None = None
        self._logged: int | None = None

    def trainable_groups(self, epoch: int, num_groups: int) -> int:
        """How many backbone groups, counted from the head, train in `epoch`."""
        reached = [n for e, n in sorted(self.milestones.items()) if e <= epoch]
        if not reached:
            return 0
        return num_groups if reached[-1] == ALL else min(int(reached[-1]), num_groups)

    def groups(self, pl_module: pl.LightningModule) -> list[LayerGroup]:
        """The backbone's groups, input -> output: the module's own `layer_groups()` less the head, which is last.

        Asked afresh each time rather than kept: a SyncBatchNorm conversion replaces BatchNorm modules after setup.
        """
        return pl_module.layer_groups()[:-1]

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        # BN modes are set from the first train epoch on: eval modules at fit start only draw a Lightning warning.
        self.apply(pl_module, epoch=0, set_bn_modes=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        self.apply(pl_module, epoch)
        if self._applied != self._logged and pl_module.trainer.is_global_zero:
            log.info(self.describe(pl_module, optimizer, epoch))
            self._logged = self._applied

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replaces BaseFinetuning's version, which snapshots param groups to re-add them on resume; no
        # group is ever added here, and restoring that snapshot would overwrite the resumed optimizer's LRs.
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        # Lightning skips `on_train_epoch_start` when it resumes from a checkpoint saved mid-epoch (a SIGTERM), and
        # `load_state_dict` cleared the applied state: apply this epoch's before its first step.
        if self._applied is None:
            self.on_train_epoch_start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply_bn_modes(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        _check_all_registered(self.groups(pl_module), trainer.optimizers)
        if isinstance(trainer.strategy, DDPStrategy):  # the model is wrapped by now
            self._ddp_registered = {id(p) for p in pl_module.parameters() if p.requires_grad}
        if self.rewarm_epochs > 0:
            for optimizer in trainer.optimizers:
                self._hooks.append(optimizer.register_step_pre_hook(self._rewarm_pre_hook(trainer, pl_module)))
                self._hooks.append(optimizer.register_step_post_hook(_restore_lrs))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Average, across ranks, the gradients that DDP does not know about (see module docstring), right after
        the backward pass as DDP does for the rest: with fp16 the GradScaler unscales and checks for infs after
        this and before `on_before_optimizer_step`, so an inf from another rank is seen by every rank's check."""
        if self._ddp_registered is None or not dist.is_initialized() or dist.get_world_size() < 2:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None and id(p) not in self._ddp_registered]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)

    def frozen_epochs(self, max_epochs: int) -> int:
        """How many epochs, from the first, train the head alone on a wholly frozen backbone (at most `max_epochs`)."""
        starts = [epoch for epoch, n in self.milestones.items() if n == ALL or int(n) > 0]
        return min([*starts, max_epochs])

    def last_change_epoch(self, pl_module: pl.LightningModule, max_epochs: int | None) -> int:
        """The last epoch (below `max_epochs`) at which the trainable set changes; 0 if it never does."""
        num_groups = len(self.groups(pl_module))
        horizon = max_epochs if max_epochs and max_epochs > 0 else max(self.milestones, default=0) + 1
        counts = [self.trainable_groups(e, num_groups) for e in range(horizon)]
        changes = [e for e in range(1, horizon) if counts[e] != counts[e - 1]]
        return changes[-1] if changes else 0

    def unfreeze_epoch(self, index: int, num_groups: int) -> int | None:
        """The first epoch in which backbone group `index` trains, or `None` if it never does."""
        starts = [e for e in sorted(self.milestones) if index >= num_groups - self.trainable_groups(e, num_groups)]
        return starts[0] if starts else None

    def rewarm_factors(self, step: int, steps_per_epoch: int, pl_module: pl.LightningModule) -> dict[str, float]:
        """LR multipliers for groups still re-warming at optimizer step `step`, by layer-group name."""
        if self._unfreeze_epochs is None:  # a pure function of the schedule: computed once, not every step
            names = [group.name for group in self.groups(pl_module)]
            self._unfreeze_epochs = {name: self.unfreeze_epoch(i, len(names)) for i, name in enumerate(names)}
        ramp = max(1, round(self.rewarm_epochs * steps_per_epoch))
        factors = {}
        for name, start in self._unfreeze_epochs.items():
            if start:  # None: never trains; 0: the scheduler's warmup covers it
                since = step - start * steps_per_epoch
                if 0 <= since < ramp:
                    factors[name] = (since + 1) / (ramp + 1)
        return factors

    def _rewarm_pre_hook(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        def scale(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
            factors = self.rewarm_factors(trainer.global_step, steps_per_epoch, pl_module)
            for group in optimizer.param_groups:
                factor = factors.get(str(group.get("name", "")).removesuffix("/no_decay"))
                if factor is not None:
                    group["_scheduled_lr"] = group["lr"]
                    group["lr"] = group["lr"] * factor

        return scale

    def state_dict(self) -> dict:
        return {"trainable_groups": self._applied}

    def load_state_dict(self, state_dict: dict) -> None:
        # Nothing to restore: the trainable set follows from the epoch (see module docstring).
        self._applied = self._logged = None

    def apply(self, pl_module: pl.LightningModule, epoch: int, set_bn_modes: bool = True) -> None:
        """Set `requires_grad` and BN modes for `epoch`."""
        groups = self.groups(pl_module)
        count = self.trainable_groups(epoch, len(groups))
        for i, group in enumerate(groups):
            trainable = i >= len(groups) - count
            bn_params = {id(p) for bn in group.batchnorms for p in bn.parameters(recurse=False)}
            for _, param in group.params:
                param.requires_grad = trainable or (self.train_bn and id(param) in bn_params)
        self._applied = count
        if set_bn_modes:
            self.apply_bn_modes(pl_module)

    def apply_bn_modes(self, pl_module: pl.LightningModule) -> None:
        """Hold BatchNorm in eval mode unless it trains and `update_bn_stats` is on, and dropout / DropPath in
        frozen groups: a frozen group is then a fixed function of its input."""
        groups, count = self.groups(pl_module), self._applied
        if count is None:
            return
        for i, group in enumerate(groups):
            trains = pl_module.training and i >= len(groups) - count
            for bn in group.batchnorms:
                bn.train((trains or (pl_module.training and self.train_bn)) and self.update_bn_stats)
            for module in group.stochastic:
                module.training = trains  # the flag alone: `train()` would recurse into a model's other groups

    def describe(self, pl_module: pl.LightningModule, optimizer: Optimizer | None, epoch: int) -> str:
        """A table of groups: trainable, parameter count, LR and BN mode."""
        lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups} if optimizer else {}
        rows = [f"Finetuning phase at epoch {epoch}:", f"  {'group':<28} {'train':>5} {'params':>11} {'lr':>10}  bn"]
        for group in self.groups(pl_module):
            trainable = any(p.requires_grad for _, p in group.params)
            bn = "-" if not group.batchnorms else ("train" if group.batchnorms[0].training else "eval")
            lr = lrs.get(group.name)
            lr_text = f"{lr:.2e}" if lr is not None else "-"
            train = "yes" if trainable else "no"
            rows.append(f"  {group.name:<28} {train:>5} {group.num_params:>11,} {lr_text:>10}  {bn}")
        return "\n".join(rows)


def _check_all_registered(groups: list[LayerGroup], optimizers: list[Optimizer]) -> None:
    """Refuse a schedule that could not work: a parameter outside every optimizer would never train when unfrozen."""
    registered = {id(p) for optimizer in optimizers for g in optimizer.param_groups for p in g["params"]}
    missing = [name for group in groups for name, p in group.params if id(p) not in registered]
    if missing:
        raise MisconfigurationException(
            f"{len(missing)} backbone parameters (e.g. {missing[:3]}) are in no optimizer param group, so unfreezing "
            "them would train nothing.\nHINT: register every parameter from the start, frozen ones included (e.g. "
            "`build_param_groups(model.layer_groups(), lrs)`), not `filter(lambda p: p.requires_grad, ...)`."
        )


def _restore_lrs(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
    for group in optimizer.param_groups:
        if "_scheduled_lr" in group:
            group["lr"] = group.pop("_scheduled_lr")


def lp_ft(unfreeze_epoch: int = 5, **kwargs: Any) -> LayerFinetuning:
    """Linear probe, then fine-tune: the head alone for `unfreeze_epoch` epochs, then every group (a sweepable knob)."""
    return LayerFinetuning(milestones={unfreeze_epoch: ALL}, **kwargs)


def top_k(k: int = 2, **kwargs: Any) -> LayerFinetuning:
    """Only the last `k` backbone groups (and the head) ever train, from the first epoch."""
    return LayerFinetuning(milestones={0: k}, **kwargs)


def gradual(every: int = 2, start: int = 1, **kwargs: Any) -> LayerFinetuning:
    """ULMFiT's gradual unfreezing: the head alone, then one more group every `every` epochs from `start`.

    The schedule is written out for up to 256 groups, more than any timm model has; surplus entries are no-ops.
    """
    if every < 1 or start < 0:
        raise BadValue(f"gradual unfreezing needs every >= 1 and start >= 0, got every={every}, start={start}.")
    return LayerFinetuning(milestones={start + i * every: i + 1 for i in range(256)}, **kwargs)


def _check_milestones(milestones: Mapping) -> dict[int, int | str]:
    checked: dict[int, int | str] = {}
    for epoch, count in dict(milestones).items():
        if int(epoch) < 0 or not (count == ALL or (isinstance(count, int) and count >= 0)):
            raise BadValue(
                f"Bad finetuning milestone {epoch!r}: {count!r}. Use {{epoch: n}} with epoch >= 0 and n a number "
                f"of backbone groups counted from the head, or '{ALL}'; e.g. {{5: {ALL}}}."
            )
        checked[int(epoch)] = count
    return checked
