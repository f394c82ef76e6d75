"""The linear-probe start and floor: the head starts as the converged probe; a fine-tuning that never beats the probe
on validation leaves the probe as the model the run keeps. The floor writes `probe.ckpt` and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_data, tiny_model, tiny_trainer, write_images
from lightning.pytorch.callbacks import ModelCheckpoint

from tl_lightning.finetuning.measure import cross_validate_probe
from tl_lightning.finetuning.probe_floor import ProbeFloor, start_head
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.features import extract_features, fit_probe, probe_as_linear
from tl_lightning.models.heads import as_single_linear, create_head


@pytest.mark.parametrize("classes", [2, 4])
def test_the_probe_folds_into_one_linear_layer_with_the_same_probabilities(classes: int):
    torch.manual_seed(0)
    features = torch.randn(60, 8) * torch.linspace(0.1, 5, 8) + 3  # unstandardised on purpose
    labels = torch.arange(60) % classes
    features[:, 0] += labels * 2.0
    probe = fit_probe(features, labels)
    weight, bias = probe_as_linear(probe, classes)
    ours = (features @ weight.T + bias).softmax(-1)
    assert torch.allclose(ours, torch.as_tensor(probe.predict_proba(features.numpy())).float(), atol=1e-5)


@pytest.mark.parametrize("norm", [False, True])
def test_a_head_with_or_without_batchnorm_starts_as_the_probe_and_folds_back_into_one_linear(norm: bool):
    torch.manual_seed(0)
    features = torch.randn(60, 8) * torch.linspace(0.1, 5, 8) + 3
    labels = torch.arange(60) % 3
    features[:, 0] += labels * 2.0
    probe = fit_probe(features, labels)
    head = create_head(8, 3, dropout=0.5, norm=norm)
    start_head(head, probe, 3)
    head.eval()
    expected = torch.as_tensor(probe.decision_function(features.numpy())).float()
    assert torch.allclose(head(features), expected, atol=1e-4)
    if norm:  # the probe's scaler is the BatchNorm's statistics: later batches of shifted features re-standardise
        assert torch.allclose(head[0].running_mean, features.mean(0), atol=1e-5)
    assert torch.allclose(as_single_linear(head)(features), head(features), atol=1e-4)
    assert as_single_linear(create_head(8, 3, hidden=[4])) is None


def _fit(folder: Path, out: Path, lr: float, epochs: int = 2, refit: bool = True):
    torch.manual_seed(0)
    model = tiny_model(lr=lr, lr_mult=1.0)
    data = tiny_data(folder, model, batch_size=6)
    best = ModelCheckpoint(dirpath=out, filename="best", monitor="val/score", mode="max")
    floor = ProbeFloor(refit=refit)
    trainer = tiny_trainer(
        max_epochs=epochs,
        enable_checkpointing=True,
        num_sanity_val_steps=0,
        callbacks=[LayerFinetuning(milestones={1: "all"}), best, floor],
    )
    model.connect_data(data)
    trainer.fit(model, data)
    return model, data, best, floor


def test_the_head_starts_as_the_probe_and_a_worse_fine_tuning_keeps_the_probe(split_folder: Path, tmp_path):
    # An absurd LR wrecks every fine-tuned epoch, so no epoch can beat the probe on validation.
    _, data, best, floor = _fit(split_folder, tmp_path / "ckpt", lr=50.0, refit=False)
    probe = torch.load(tmp_path / "ckpt" / "probe.ckpt", weights_only=True)["state_dict"]
    assert floor.kept and floor.probe_path == str(tmp_path / "ckpt" / "probe.ckpt")
    assert not floor.refitted  # without refit, the kept model never saw validation
    # The checkpoint callback's file and state are its own: the wrecked best epoch, not edited into the probe.
    epoch = torch.load(best.best_model_path, weights_only=True)
    assert float(best.best_model_score) < floor.probe_metrics["val/score"]
    assert not all(torch.equal(probe[k], epoch["state_dict"][k]) for k in probe)

    # The probe's head is the logistic regression of the frozen features; the model in probe.ckpt computes it.
    fresh = tiny_model()
    fresh.load_state_dict(probe)
    features, labels = extract_features(fresh.backbone, data.eval_dataloader("train"))
    expected = fit_probe(features, labels, c=cross_validate_probe(features, labels).c)  # ProbeFloor's own C
    logits = fresh.head(features)
    assert torch.equal(logits.argmax(-1), torch.as_tensor(expected.predict(features.numpy())))


def test_the_kept_probe_is_refitted_on_train_and_val_and_fine_tuning_starts_from_the_train_only_one(
    split_folder: Path, tmp_path
):
    from tl_lightning.app.pipeline import calibrate, keep_model

    model, data, _, floor = _fit(split_folder, tmp_path / "ckpt", lr=50.0, epochs=1)
    written = (tmp_path / "ckpt" / "probe.ckpt").read_bytes()
    kept = torch.load(floor.probe_path, weights_only=True)["state_dict"]
    fresh = tiny_model()
    fresh.load_state_dict(kept)
    train = extract_features(fresh.backbone, data.eval_dataloader("train"))
    val = extract_features(fresh.backbone, data.eval_dataloader("val"))
    c = cross_validate_probe(*train).c
    first = fit_probe(*train, c=c)
    refitted = fit_probe(torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]), c=c)
    assert floor.kept and floor.refitted
    # The kept model is the refitted probe (it differs from the first: it saw validation too) ...
    first_p, refit_p = (torch.as_tensor(p.predict_proba(val[0].numpy())).float() for p in (first, refitted))
    assert not torch.allclose(first_p, refit_p, atol=1e-3)
    assert torch.allclose(fresh.head(val[0]).softmax(-1), refit_p, atol=1e-4)
    # ... validation fits no temperature for it: T stays 1, in the run's model file too, and probe.ckpt is as written.
    temperature, rule = calibrate(model, data, model.trainer, floor.probe_path, fit=False)
    assert temperature == 1.0 and rule["target_accuracy"] == 0.95
    model_file = keep_model(model, floor.probe_path, tmp_path / "ckpt" / "model.ckpt", rule)
    saved = torch.load(model_file, weights_only=True)
    assert float(saved["state_dict"]["temperature"]) == 1.0 and saved["tl_lightning"]["abstention"] == rule
    assert all(torch.equal(kept[k], saved["state_dict"][k]) for k in kept)
    assert (tmp_path / "ckpt" / "probe.ckpt").read_bytes() == written

    # Fine-tuning started from the first probe: with a zero LR the live head ends as that probe.
    still, *_ = _fit(split_folder, tmp_path / "still", lr=0.0, epochs=1)
    assert torch.allclose(still.head(val[0]).softmax(-1), first_p, atol=1e-4)


def test_the_run_never_ends_below_the_probe_on_validation(tmp_path: Path):
    folder = tmp_path / "data"
    write_images(folder / "train", per_class=12, seed=1)
    write_images(folder / "val", per_class=6, seed=2)
    _, _, best, floor = _fit(folder, tmp_path / "ckpt", lr=3e-3, epochs=6)
    # What the run keeps scores at least the probe: the probe itself, or an epoch that beats it.
    assert floor.kept or float(best.best_model_score) > floor.probe_metrics["val/score"]
    assert Path(best.best_model_path).name == "best.ckpt"  # the callback's own file, never replaced


def test_fine_tuning_must_beat_the_probe_by_more_than_its_standard_error_on_validation(split_folder: Path, tmp_path):
    from tl_lightning.finetuning.probe_floor import ACC_STDERR, SCORE, STDERR

    model, data, best, floor = _fit(split_folder, tmp_path / "ckpt", lr=50.0, epochs=1)
    fresh = tiny_model()
    fresh.load_state_dict(torch.load(tmp_path / "ckpt" / "probe.ckpt", weights_only=True)["state_dict"])
    train = extract_features(fresh.backbone, data.eval_dataloader("train"))
    val_x, val_y = extract_features(fresh.backbone, data.eval_dataloader("val"))
    first = fit_probe(*train, c=cross_validate_probe(*train).c)  # the probe validation judged
    logits = torch.as_tensor(first.predict_log_proba(val_x.numpy())).float()
    losses = torch.nn.functional.cross_entropy(logits, val_y, reduction="none", label_smoothing=0.1)
    n = len(val_y)
    assert n < model.hparams.score_accuracy_from  # 6 images: the score is the loss, its SE the losses' spread
    assert floor.probe_metrics[STDERR] == pytest.approx(float(losses.std()) / n**0.5, rel=1e-3)

    # A fine-tuned epoch ahead of the probe by less than the standard error does not replace it ...
    ahead = floor.probe_metrics[SCORE] + 0.5 * floor.probe_metrics[STDERR]
    best.best_model_score, floor.kept = torch.tensor(ahead), False
    floor.on_fit_end(model.trainer, model)
    assert floor.kept and best.best_model_score == pytest.approx(ahead)  # decided, with nothing rewritten
    # ... one ahead by more, but not more accurate on validation by more than a standard error, does not either ...
    probe_acc = floor.probe_metrics["val/acc"]
    assert floor.probe_metrics[ACC_STDERR] == pytest.approx((probe_acc * (1 - probe_acc) / n) ** 0.5)
    probe_acc, acc_stderr = 0.5, (0.25 / n) ** 0.5  # a probe right on half the images (this one may be on all)
    floor.probe_metrics |= {"val/acc": probe_acc, ACC_STDERR: acc_stderr}
    floor.best_epoch = {SCORE: ahead + floor.probe_metrics[STDERR], "val/acc": probe_acc + 0.5 * acc_stderr}
    best.best_model_score, floor.kept = torch.tensor(floor.best_epoch[SCORE]), False
    floor.on_fit_end(model.trainer, model)
    assert floor.kept
    # ... one ahead by more in both does.
    floor.best_epoch["val/acc"] = probe_acc + 1.5 * acc_stderr
    best.best_model_score, floor.kept = torch.tensor(floor.best_epoch[SCORE]), False
    floor.on_fit_end(model.trainer, model)
    assert not floor.kept


def test_the_floor_remembers_the_accuracy_of_the_first_epoch_with_the_best_score(split_folder: Path, tmp_path):
    from lightning.pytorch.callbacks import Callback

    from tl_lightning.finetuning.probe_floor import SCORE

    class Record(Callback):
        def __init__(self):
            self.epochs = []

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                metrics = trainer.callback_metrics
                self.epochs.append((float(metrics[SCORE]), float(metrics["val/acc"])))

    torch.manual_seed(0)
    model, record = tiny_model(lr=1e-2, lr_mult=1.0), Record()
    data = tiny_data(split_folder, model, batch_size=6)
    floor = ProbeFloor(keep_probe=False)
    trainer = tiny_trainer(max_epochs=4, callbacks=[LayerFinetuning(milestones={1: "all"}), floor, record])
    trainer.fit(model, data)
    best_score = max(score for score, _ in record.epochs)
    first_best = next((score, acc) for score, acc in record.epochs if score == best_score)
    assert len(record.epochs) == 4
    assert floor.best_epoch == {SCORE: first_best[0], "val/acc": first_best[1]}
    assert floor.state_dict()["best_epoch"] == floor.best_epoch  # a resumed run compares the same epoch
