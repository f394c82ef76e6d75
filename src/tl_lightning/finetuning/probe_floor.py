"""Start fine-tuning from a converged linear probe, and keep that probe when fine-tuning does not beat it.

LP-FT (Kumar et al., ICLR 2022) fine-tunes from the *converged* linear probe: a random or half-trained head sends
large, wrong gradients into the backbone at the unfreeze and distorts the features it is meant to reuse; a logistic
regression on the frozen features converges in seconds. On small data fine-tuning can still end below that probe,
so the probe is also the floor: a fine-tuned model is kept only if it beats the probe on validation by more than a
standard error (`models.metrics.beats`), in the selection score and in accuracy both, because under 100 validation
images the score is a loss, which can fall while accuracy does not rise. Once validation has chosen the probe, the
probe is refitted on training and validation images together (scikit-learn's `refit` after model selection), and
keeps temperature 1: its C, chosen by cross-validated log loss, calibrates it.

Written here because neither Lightning nor timm has a probe-initialised head; the probe itself is scikit-learn's
`LogisticRegression` (`models.features.fit_probe`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from sklearn.pipeline import Pipeline
from torch import nn

from tl_lightning.finetuning.measure import cross_validate_probe
from tl_lightning.models.features import extract_features, fit_probe, probe_as_linear
from tl_lightning.models.heads import as_single_linear
from tl_lightning.models.metrics import beats, binomial_stderr, selection_score

log = logging.getLogger(__name__)

SCORE = "val/score"
STDERR = "val/score_stderr"  # the probe's score's standard error over the validation images
ACC_STDERR = "val/acc_stderr"  # and its accuracy's


class ProbeFloor(Callback):
    """Fit the head as a linear probe on frozen features before the first step; keep the probe if it stays best.

    At the start of a fresh fit the backbone's pooled features of the training and validation images (eval
    preprocessing, BatchNorm in eval mode) are extracted once, a logistic regression is fitted on the training
    ones (L2 strength `1 / c`, `c` chosen by cross-validation on those features unless given; the loss's class
    weights, if any, as sample weights per class), and its weights
    are written into the head's linear layer. The probe's validation metrics are computed the way the
    validation loop computes them, and the model as it stands is saved as `probe.ckpt` beside the monitored
    checkpoint. When fitting ends, unless the best checkpoint's `val/score` and `val/acc` both beat the probe's by
    more than their standard errors, `kept` says the run keeps the probe, and the run says so. It writes only
    `probe.ckpt`: the run's model file is written once, after fit, from the checkpoint the run keeps
    (`app.pipeline.keep_model`).

    Args:
        c: inverse L2 strength of the logistic regression (on standardised features); `None` chooses it by
            stratified 5-fold cross-validation on the training features (`measure.cross_validate_probe`): the best
            strength differs by data set.
        keep_probe: keep the probe when fine-tuning does not beat it on validation.
        refit: the kept probe is the one refitted on training and validation images (same C); `refitted` says
            the saved probe is that one, so the run does not fit a temperature on validation for it.

    A head with hidden layers is left as it is (a probe is one linear layer); a resumed fit does not probe again
    (the checkpoint holds the head), but still compares against the probe it saved.
    """

    def __init__(self, c: float | None = None, keep_probe: bool = True, refit: bool = True) -> None:
        self.c = c
        self.keep_probe = keep_probe
        self.refit = refit
        self.probe_metrics: dict[str, float] = {}
        self.probe_path: str = ""
        self.refitted = False
        self.kept = False
        self.best_epoch: dict[str, float] = {}  # val/score and val/acc of the best fine-tuned epoch so far

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0 or self.probe_metrics:
            return  # resumed: the head is the checkpoint's, the probe's metrics come back through state_dict
        if as_single_linear(pl_module.head) is None:
            log.info("ProbeFloor: the head has hidden layers, so it is not started from a linear probe.")
            return
        started = time.perf_counter()
        datamodule = trainer.datamodule
        # On the trainer's device (fit has moved the module there) and in its precision (its autocast). Every rank
        # extracts every image: each needs the same head, and one probe costs one pass over train and val.
        with trainer.precision_plugin.forward_context():
            train = extract_features(pl_module.backbone, datamodule.eval_dataloader("train"))
            val = extract_features(pl_module.backbone, datamodule.eval_dataloader("val"))
        weights = pl_module.class_weight.cpu()
        class_weight = None if torch.all(weights == 1) else dict(enumerate(weights.tolist()))
        c = self.c
        if c is None:
            measured = cross_validate_probe(*train)
            c = measured.c
            because = f"{measured.folds}-fold cross-validation on the training features chose it"
            log.info(
                "recipe: callbacks.probe_floor.c=%g because %s (accuracy %.3f +- %.3f)",
                c,
                because,
                measured.accuracy,
                measured.stderr,
            )
        probe = fit_probe(*train, c=c, class_weight=class_weight)
        start_head(pl_module.head, probe, pl_module.hparams.num_classes)
        with torch.no_grad():
            logits = pl_module.head.eval()(val[0].to(pl_module.device))
        pl_module.head.train(pl_module.training)
        metrics = pl_module.score(logits, val[1], "val")
        acc, loss = metrics["val/acc"], metrics["val/loss"]
        samples = max(1, len(val[1]))
        accuracy_from = pl_module.hparams.get("score_accuracy_from", 0)
        if samples < accuracy_from:  # the score is the negative loss, as the validation loop computes it
            losses = pl_module.selection_losses(logits, val[1])
            loss = float(losses.mean())
            stderr = float(losses.std()) / math.sqrt(samples) if samples > 1 else 0.0
        acc_stderr = binomial_stderr(acc, samples)
        if samples >= accuracy_from:  # the score is an accuracy
            stderr = acc_stderr
        score = selection_score(acc, loss, samples, accuracy_from)
        self.probe_metrics = {"val/acc": acc, "val/loss": loss, SCORE: score, STDERR: stderr, ACC_STDERR: acc_stderr}
        log.info(
            "recipe: the head starts from a converged linear probe (train acc %.3f, val acc %.3f, %.1f s) "
            "because fine-tuning from a half-trained head distorts the pretrained features (LP-FT)",
            probe.score(train[0].numpy(), train[1].numpy()),
            metrics["val/acc"],
            time.perf_counter() - started,
        )
        if self.keep_probe and (folder := _checkpoint_folder(trainer)) is not None:
            self.probe_path = str(folder / "probe.ckpt")
            if not self.refit:
                trainer.save_checkpoint(self.probe_path)
                return
            self.refitted = True
            started_head = copy.deepcopy(pl_module.head.state_dict())
            both = torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]])
            start_head(pl_module.head, fit_probe(*both, c=c, class_weight=class_weight), pl_module.hparams.num_classes)
            trainer.save_checkpoint(self.probe_path)  # the refitted probe, kept if fine-tuning does not beat the first
            pl_module.head.load_state_dict(started_head)  # fine-tuning starts from the probe validation has not seen

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitored = _monitored(trainer)
        if not self.keep_probe or not self.probe_path or monitored is None or not Path(self.probe_path).is_file():
            return
        best = monitored.best_model_score
        probe, stderr = self.probe_metrics[SCORE], self.probe_metrics.get(STDERR, 0.0)
        probe_acc, acc_stderr = self.probe_metrics.get("val/acc", 0.0), self.probe_metrics.get(ACC_STDERR, 0.0)
        best_acc = self.best_epoch.get("val/acc")  # unknown (None) in a run resumed from before it was kept
        measured = f"val/score {float(best) if best is not None else float('nan'):.4f} vs the probe's {probe:.4f} "
        measured += f"+- {stderr:.4f}"
        if best_acc is not None:
            measured += f", accuracy {best_acc:.3f} vs {probe_acc:.3f} +- {acc_stderr:.3f}"
        beats_score = best is not None and beats(float(best), probe, stderr)
        beats_acc = best_acc is None or beats(best_acc, probe_acc, acc_stderr)
        if beats_score and beats_acc:
            log.info(
                "recipe: kept the fine-tuned model because it beat the linear probe on validation by more than a "
                "standard error in both val/score and accuracy (%s)",
                measured,
            )
            return
        self.kept = True
        log.warning(
            "recipe: kept the linear probe's model%s because no fine-tuned epoch beat it on validation by more than a "
            "standard error in both val/score and accuracy (%s)",
            ", refitted on the training and validation images," if self.refitted else "",
            measured,
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the accuracy of the epoch the monitored checkpoint keeps (the first with the highest score)."""
        score, acc = trainer.callback_metrics.get(SCORE), trainer.callback_metrics.get("val/acc")
        if trainer.sanity_checking or score is None or acc is None:
            return
        if not self.best_epoch or float(score) > self.best_epoch[SCORE]:
            self.best_epoch = {SCORE: float(score), "val/acc": float(acc)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe_metrics": self.probe_metrics,
            "probe_path": self.probe_path,
            "refitted": self.refitted,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.probe_metrics = dict(state_dict.get("probe_metrics", {}))
        self.probe_path = state_dict.get("probe_path", "")
        self.refitted = bool(state_dict.get("refitted", False))
        self.best_epoch = dict(state_dict.get("best_epoch", {}))


@torch.no_grad()
def start_head(head: nn.Sequential, probe: Pipeline, num_classes: int) -> None:
    """Write a fitted probe into a head of `[BatchNorm1d], [Dropout], Linear`: with a `BatchNorm1d`, the probe's
    scaler becomes its statistics (identity affine) and the linear layer takes the weights on standardised features;
    without one, the standardisation is folded into the linear layer (`probe_as_linear`)."""
    norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
    linear = next(m for m in head if isinstance(m, nn.Linear))
    if not norms:
        weight, bias = probe_as_linear(probe, num_classes)
    else:
        scaler = probe[0]
        norm = norms[0]
        norm.running_mean.copy_(torch.as_tensor(scaler.mean_))
        norm.running_var.copy_(torch.as_tensor(scaler.scale_) ** 2 - norm.eps).clamp_(min=0)
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        weight, bias = probe_as_linear(probe[1:], num_classes)  # on the standardised features
    linear.weight.copy_(weight)
    linear.bias.copy_(bias)


def _monitored(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The ModelCheckpoint that selects on `val/score` (highest best), if any."""
    found = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor == SCORE]
    return found[0] if found else None


def _checkpoint_folder(trainer: pl.Trainer) -> Path | None:
    monitored = _monitored(trainer)
    if monitored is None or monitored.dirpath is None:
        return None
    return Path(monitored.dirpath)
