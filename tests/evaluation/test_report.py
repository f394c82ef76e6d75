"""The test report and temperature scaling: unit checks, then the digits default end to end."""

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import compose_train, tiny_model, write_images
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torchmetrics.classification import (
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from tl_lightning.data.digits import DigitsDataModule
from tl_lightning.evaluation.calibration import (
    collect_logits,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from tl_lightning.evaluation.report import log_report, write_report
from tl_lightning.models.heads import scaled_softmax
from tl_lightning.models.module import TransferClassifier


def synthetic(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): calibrated by construction at T = 1."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=generator) * 2
    targets = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    return logits, targets


def read_csv(path: Path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f))


def test_fitted_temperature_undoes_a_known_overconfidence():
    logits, targets = synthetic()
    assert fit_temperature(logits * 3, targets) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits / 2, targets) == pytest.approx(0.5, rel=0.1)


def test_temperature_scaling_lowers_calibration_error_of_an_overconfident_model():
    logits, targets = synthetic()
    overconfident = logits * 3
    temperature = fit_temperature(overconfident[:2000], targets[:2000])
    held_out, held_targets = overconfident[2000:], targets[2000:]
    before = expected_calibration_error(held_out.softmax(-1), held_targets)
    after = expected_calibration_error((held_out / temperature).softmax(-1), held_targets)
    assert after < before / 2


def test_reliability_bins_give_torchmetrics_ece():
    logits, targets = synthetic(n=500)
    probs = (logits * 2).softmax(-1)
    bins = reliability_bins(probs, targets)
    weighted_gap = float(((bins.confidence - bins.accuracy).abs() * bins.count).sum() / bins.count.sum())
    assert int(bins.count.sum()) == 500
    assert weighted_gap == pytest.approx(expected_calibration_error(probs, targets), abs=1e-5)


def test_report_files_agree_with_torchmetrics(tmp_path: Path):
    classes = ["ant", "bee", "cow", "dog"]
    folder = write_images(tmp_path / "images", classes=classes, per_class=10, size=16)
    files = sorted(folder.rglob("*.png"))
    targets = torch.tensor([classes.index(f.parent.name) for f in files])
    logits = torch.randn(len(files), 4, generator=torch.Generator().manual_seed(1)) + 2 * torch.eye(4)[targets]
    scalars = write_report(tmp_path / "run", logits, targets, classes, files, temperature=0.7, top_losses=6)

    rows = read_csv(tmp_path / "run" / "report" / "per_class.csv")
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    table = {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}
    for i, metric in enumerate((MulticlassPrecision, MulticlassRecall, MulticlassF1Score)):
        expected = metric(4, average=None)(logits, targets)
        assert [table[c][i] for c in classes] == pytest.approx(expected.tolist(), abs=1e-4)
        assert table["macro avg"][i] == pytest.approx(float(metric(4, average="macro")(logits, targets)), abs=1e-4)
        assert table["weighted avg"][i] == pytest.approx(
            float(metric(4, average="weighted")(logits, targets)), abs=1e-4
        )
    assert [table[c][3] for c in classes] == [10, 10, 10, 10]

    counts = read_csv(tmp_path / "run" / "report" / "confusion_matrix.csv")
    assert counts[0][1:] == classes and [r[0] for r in counts[1:]] == classes
    expected_counts = MulticlassConfusionMatrix(4)(logits, targets)
    assert torch.tensor([[int(v) for v in r[1:]] for r in counts[1:]]).equal(expected_counts)
    rates = read_csv(tmp_path / "run" / "report" / "confusion_matrix_normalized.csv")
    expected_rates = MulticlassConfusionMatrix(4, normalize="true")(logits, targets)
    assert torch.tensor([[float(v) for v in r[1:]] for r in rates[1:]]) == pytest.approx(expected_rates, abs=1e-4)

    ece = MulticlassCalibrationError(4, n_bins=15)
    assert scalars["test/ece"] == pytest.approx(float(ece(logits.softmax(-1), targets)), abs=1e-6)
    assert scalars["test/ece_calibrated"] == pytest.approx(float(ece((logits / 0.7).softmax(-1), targets)), abs=1e-6)

    markdown = (tmp_path / "run" / "report.md").read_text()
    pngs = ("confusion_matrix.png", "reliability.png", "top_losses.png")
    for linked in ("per_class.csv", "confusion_matrix.csv", "predictions.csv", *pngs):
        assert f"report/{linked}" in markdown
        assert (tmp_path / "run" / "report" / linked).stat().st_size > 0
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    worst = files[int(losses.argmax())]
    assert f"| {worst} | {classes[targets[int(losses.argmax())]]} |" in markdown  # the top row of the loss table

    predictions = read_csv(tmp_path / "run" / "report" / "predictions.csv")
    assert predictions[0] == ["path", "true", "predicted", "probability", "loss"]
    assert [row[0] for row in predictions[1:]] == [str(f) for f in files]  # every test image, in split order
    assert [row[1] for row in predictions[1:]] == [classes[t] for t in targets]
    assert [row[2] for row in predictions[1:]] == [classes[p] for p in logits.argmax(1)]
    assert [float(row[4]) for row in predictions[1:]] == pytest.approx(losses.tolist(), abs=1e-5)
    right = [row[1] == row[2] for row in predictions[1:]]
    assert sum(right) / len(right) == pytest.approx(float((logits.argmax(1) == targets).float().mean()))
    by_loss = sorted(predictions[1:], key=lambda row: -float(row[4]))[:6]
    assert read_csv(tmp_path / "run" / "report" / "top_losses.csv")[1:] == by_loss


def test_report_reaches_csv_and_tensorboard_loggers(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    classes = ["a", "b"]
    files = sorted(write_images(tmp_path / "images", classes=classes, per_class=3, size=8).rglob("*.png"))
    targets = torch.tensor([classes.index(f.parent.name) for f in files])
    out = tmp_path / "run"
    scalars = write_report(out, torch.randn(6, 2), targets, classes, files)
    loggers = [CSVLogger(tmp_path / "logs"), TensorBoardLogger(tmp_path / "tb")]
    log_report(loggers, scalars, out, step=7)
    logged = read_csv(Path(loggers[0].log_dir) / "metrics.csv")
    assert "test/ece" in logged[0]
    events = EventAccumulator(loggers[1].log_dir)
    events.Reload()
    assert set(events.Tags()["images"]) >= {"report/confusion_matrix", "report/reliability", "report/top_losses"}
    assert "test/ece" in events.Tags()["scalars"]


def test_stored_temperature_is_loaded_and_applied(tmp_path: Path):
    model = tiny_model()
    model.temperature.fill_(2.5)  # as the run's calibration leaves it before `pipeline.keep_model` saves it
    path = tmp_path / "model.ckpt"
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    loaded = TransferClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    x = torch.randn(3, 3, 32, 32)
    assert float(loaded.temperature) == 2.5
    with torch.no_grad():
        torch.testing.assert_close(loaded.probabilities(x), (loaded(x) / 2.5).softmax(-1))
        torch.testing.assert_close(loaded.predict_step(x, 0), loaded.probabilities(x))
        assert not torch.allclose(loaded.probabilities(x), loaded(x).softmax(-1))

    old = torch.load(path, weights_only=True)  # a checkpoint from before calibration existed
    del old["state_dict"]["temperature"]
    torch.save(old, tmp_path / "old.ckpt")
    assert float(TransferClassifier.load_from_checkpoint(tmp_path / "old.ckpt").temperature) == 1.0


def test_digits_run_writes_a_report_from_the_calibrated_best_checkpoint(digits_run: tuple[Path, dict]):
    out, metrics = digits_run
    best = out / "checkpoints" / "model.ckpt"
    saved = torch.load(best, map_location="cpu", weights_only=True)
    temperature = metrics["calibration/temperature"]
    assert saved["tl_lightning"]["temperature"] == pytest.approx(temperature)
    assert float(saved["state_dict"]["temperature"]) == pytest.approx(temperature)
    assert json.loads((out / "metrics.json").read_text())["test/ece"] == pytest.approx(metrics["test/ece"])

    model = TransferClassifier.load_from_checkpoint(best, map_location="cpu")
    dm = DigitsDataModule(cache_dir=compose_train([]).paths.cache_dir, data_config=model.data_config)
    dm.setup("test")
    logits, targets = collect_logits(model, dm.test_dataloader())
    table = {row[0]: row[1:] for row in read_csv(out / "report" / "per_class.csv")[1:]}
    recall = MulticlassRecall(10, average=None)(logits, targets)
    assert [float(table[c][1]) for c in model.class_names] == pytest.approx(recall.tolist(), abs=1e-4)
    ece = MulticlassCalibrationError(10, n_bins=15)
    assert metrics["test/ece"] == pytest.approx(float(ece(logits.softmax(-1), targets)), abs=1e-5)
    calibrated = MulticlassCalibrationError(10, n_bins=15)(scaled_softmax(logits, temperature), targets)
    assert metrics["test/ece_calibrated"] == pytest.approx(float(calibrated), abs=1e-5)
    assert np.isfinite(temperature) and temperature > 0
    # what the fit guarantees (test ECE need not fall): the validation NLL at T is no worse than at T = 1
    dm.setup("fit")
    val_logits, val_targets = collect_logits(model, dm.eval_dataloader("val"))
    nll = {t: float(torch.nn.functional.cross_entropy(val_logits / t, val_targets)) for t in (1.0, temperature)}
    assert nll[temperature] <= nll[1.0] + 1e-6


def test_a_degenerate_temperature_is_not_used(caplog: pytest.LogCaptureFixture):
    targets = torch.arange(40) % 4
    constant = torch.tensor([[3.0, 0.0, 0.0, 0.0]]).repeat(40, 1)  # one class for every image: no signal
    assert fit_temperature(constant, targets) == 1.0
    assert "outside [0.05, 20.0]" in caplog.text


def test_a_separable_or_tiny_validation_set_keeps_t_at_one_with_a_warning(caplog: pytest.LogCaptureFixture):
    targets = torch.arange(60) % 3
    separated = torch.nn.functional.one_hot(targets, 3).float() * 4 + torch.randn(60, 3) * 0.1  # all right
    assert fit_temperature(separated, targets) == 1.0  # a fit would drive T to its lower bound
    assert "separates all 60 validation images" in caplog.text
    caplog.clear()
    noisy = separated.clone()
    noisy[:10] = noisy[:10].roll(1, dims=1)  # some mistakes: a temperature can be fitted
    assert fit_temperature(noisy, targets) != 1.0 and not caplog.text
    assert fit_temperature(noisy[:15], targets[:15]) == 1.0
    assert "15 validation images are too few" in caplog.text


def test_collecting_logits_restores_each_module_mode():
    model = tiny_model()
    model.train()
    frozen_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen_bn.eval()  # a BatchNorm held in eval mode by the finetuning policy
    collect_logits(model, [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))])
    assert model.training and not frozen_bn.training
