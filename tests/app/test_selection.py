"""Model selection on a tiny validation set: accuracy moves by whole images and saturates early, so the loss selects;
on a large one, accuracy selects and the loss breaks ties."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose_train
from PIL import Image

from tl_lightning.app.train import run


def test_a_tiny_validation_set_selects_on_loss(tmp_path: Path, caplog):
    """The default backbone (shipped Lite0 weights) on nearly solid colours: the head separates them in the frozen
    phase, accuracy collapses at the unfreeze and recovers, as on the held-out faces set. best_epoch.ckpt is the epoch
    with the lowest validation loss, not the first epoch at the best accuracy (what `val/acc` would keep), and the
    run's model.ckpt holds its weights."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2), ("test", 4)):  # 6 validation images
        for index, name in enumerate(("red", "green", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.full((24, 24, 3), 30.0)
                pixels[..., index] = 220
                noisy = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(root / split / name / f"{i}.png")
    out = tmp_path / "run"
    overrides = [
        "data=folder",
        f"data.root={root}",
        "model.image_size=32",
        "augment=none",
        f"paths.output_dir={out}",
        *FAST,
        "logger=csv",
        "trainer.max_epochs=9",
        "model.lr=3e-3",
        "data.batch_size=4",
        "callbacks.finetuning.unfreeze_epoch=3",
        "trainer.limit_train_batches=null",
        "callbacks.probe_floor.keep_probe=false",  # selection among the epochs alone (the probe's floor has its tests)
    ]
    run(compose_train(overrides))
    with open(next(out.glob("csv/version_*/metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    accuracy = {int(r["epoch"]): float(r["val/acc"]) for r in rows}
    loss = {int(r["epoch"]): float(r["val/loss"]) for r in rows}
    best = max(accuracy.values())
    tied = [e for e in accuracy if accuracy[e] == best]
    assert best == 1.0 and tied[0] < 3 < tied[-1], f"frozen and fine-tuned epochs should tie: {accuracy}"
    chosen = torch.load(out / "checkpoints" / "best_epoch.ckpt", map_location="cpu", weights_only=True)
    assert chosen["epoch"] == min(loss, key=loss.get) != tied[0], f"kept epoch {chosen['epoch']} of {accuracy}, {loss}"
    kept = torch.load(out / "checkpoints" / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(value, kept[key]) for key, value in chosen["state_dict"].items() if key != "temperature")
    assert "The validation split has 6 images" in caplog.text and "chosen on the validation loss" in caplog.text


def test_accuracy_selects_on_a_large_validation_set_and_the_loss_on_a_small_one():
    from tl_lightning.models.metrics import MIN_ACCURACY_IMAGES, selection_score

    large, small = MIN_ACCURACY_IMAGES, MIN_ACCURACY_IMAGES - 1
    assert selection_score(0.91, 2.0, large) > selection_score(0.90, 0.1, large)  # one image of accuracy wins
    assert selection_score(0.90, 0.3, large) > selection_score(0.90, 0.4, large)  # ties: the lower loss
    assert selection_score(0.80, 0.3, small) > selection_score(0.95, 0.4, small)  # few images: the loss alone
    assert selection_score(torch.tensor(0.8), torch.tensor(0.3), torch.tensor(small)) == -0.3


def test_a_run_whose_fine_tuning_never_beats_the_probe_keeps_the_probe_and_says_so(flat_folder: Path, tmp_path):
    from conftest import folder_overrides

    out = tmp_path / "run"
    metrics = run(compose_train([*folder_overrides(flat_folder, out), "model.lr=50"]))  # every epoch wrecked
    assert metrics["selected"] == "linear probe" and metrics["checkpoint"] == str(out / "checkpoints" / "model.ckpt")
    assert metrics["kept_from"] == str(out / "checkpoints" / "probe.ckpt")
    probe = torch.load(out / "checkpoints" / "probe.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    best = torch.load(out / "checkpoints" / "model.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(probe[k], best[k]) for k in probe if k != "temperature")
    assert metrics["test/acc"] >= 0.5  # the probe's model, not the wrecked one, was tested
    assert "the linear probe's model" in (out / "report.md").read_text()


def _better_than_chance(images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of three classes that rank the true class first more often than not, but not always."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(images) % 3
    logits = torch.randn(images, 3, generator=generator)
    logits[torch.arange(images), targets] += 1.0
    assert not bool((logits.argmax(-1) == targets).all())
    return logits, targets


def test_splits_the_run_can_calibrate_select_on_the_loss_the_calibrated_model_will_have():
    from conftest import tiny_model

    from tl_lightning.models.metrics import MIN_CALIBRATION_IMAGES

    model = tiny_model()
    logits, targets = _better_than_chance(MIN_CALIBRATION_IMAGES + 10)
    timid, confident = model.selection_losses(logits, targets), model.selection_losses(5 * logits, targets)
    # The same ranking, five times as confident, scores the same: a temperature takes the difference away ...
    assert torch.allclose(timid, confident, atol=1e-3)
    # ... where the training loss (label smoothing) tells them apart by more than a tenth of a nat.
    assert abs(float(model.criterion(5 * logits, targets) - model.criterion(logits, targets))) > 0.1
    # The mean is the plain log-likelihood at its best temperature, found here on a grid.
    best = min(float(torch.nn.functional.cross_entropy(logits / t, targets)) for t in torch.logspace(-2, 2, 4001))
    assert float(timid.mean()) == pytest.approx(best, rel=1e-3)


def test_splits_too_small_to_calibrate_select_on_the_training_loss():
    from conftest import tiny_model

    from tl_lightning.models.metrics import MIN_CALIBRATION_IMAGES

    model = tiny_model()
    logits, targets = _better_than_chance(MIN_CALIBRATION_IMAGES - 1)
    losses = model.selection_losses(logits, targets)
    assert float(losses.mean()) == pytest.approx(float(model.criterion(logits, targets)), rel=1e-5)
    separated = torch.nn.functional.one_hot(targets, 3).float() * 4  # every image right: no temperature either
    many = torch.cat([separated] * 2), torch.cat([targets] * 2)
    assert float(model.selection_losses(*many).mean()) == pytest.approx(float(model.criterion(*many)), rel=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_class_weights_count_in_the_selection_loss_whether_or_not_the_run_calibrates(loss: str):
    from conftest import tiny_model

    from tl_lightning.models.metrics import MIN_CALIBRATION_IMAGES

    weights = torch.tensor([1.0, 4.0, 0.5])
    model = tiny_model(imbalance={"class_weights": weights.tolist(), "loss": loss})
    small = _better_than_chance(MIN_CALIBRATION_IMAGES - 1)
    # Too few to calibrate: the training loss over the split, the weighted mean a batch of it would get.
    assert float(model.selection_losses(*small).mean()) == pytest.approx(float(model.criterion(*small)), rel=1e-5)
    unweighted = tiny_model(imbalance={"loss": loss})
    assert abs(float(model.selection_losses(*small).mean() - unweighted.selection_losses(*small).mean())) > 1e-3
    # Calibrated: the weighted log-likelihood at its best temperature, found here on a grid.
    logits, targets = _better_than_chance(MIN_CALIBRATION_IMAGES + 10)
    nll = {float(t): float(torch.nn.functional.cross_entropy(logits / t, targets)) for t in torch.logspace(-2, 2, 4001)}
    t = min(nll, key=nll.get)
    best = nll[t]
    weighted = float(torch.nn.functional.cross_entropy(logits / t, targets, weight=weights))
    assert float(model.selection_losses(logits, targets).mean()) == pytest.approx(weighted, rel=1e-3)
    assert weighted != pytest.approx(best, rel=1e-2)  # the weights moved it


def test_the_validation_loop_scores_a_small_split_on_its_calibrated_loss(tmp_path: Path):
    from conftest import tiny_data, tiny_model, tiny_trainer, write_images

    from tl_lightning.finetuning.probe_floor import start_head
    from tl_lightning.models.features import extract_features, fit_probe
    from tl_lightning.models.metrics import MIN_CALIBRATION_IMAGES

    torch.manual_seed(0)
    model = tiny_model()
    write_images(tmp_path / "train", per_class=4, seed=1)
    write_images(tmp_path / "val", per_class=(MIN_CALIBRATION_IMAGES + 2) // 3, seed=2, size=24)
    for moved in sorted((tmp_path / "val" / "dog").iterdir())[:3]:  # mislabelled: the probe gets them wrong
        moved.rename(tmp_path / "val" / "cat" / moved.name)
    data = tiny_data(tmp_path, model, batch_size=5)
    model.connect_data(data)
    data.setup("fit")
    start_head(model.head, fit_probe(*extract_features(model.backbone, data.eval_dataloader("train"))), 3)
    trainer = tiny_trainer()
    score = trainer.validate(model, data, verbose=False)[0]["val/score"]
    logits, targets = [], []
    with torch.no_grad():
        for x, y in data.val_dataloader():
            logits.append(model.eval()(x))
            targets.append(y)
    logits, targets = torch.cat(logits), torch.cat(targets)
    assert MIN_CALIBRATION_IMAGES <= len(targets) < model.hparams.score_accuracy_from
    assert score == pytest.approx(-float(model.selection_losses(logits, targets).mean()), rel=1e-4)
    assert score != pytest.approx(-float(model.criterion(logits, targets)), rel=1e-2)  # not the training loss
