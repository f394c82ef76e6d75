import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit_with_checkpoints, tiny_data, tiny_model
from PIL import Image

from tl_lightning.app.predict import main
from tl_lightning.data.drift import InputStatistics
from tl_lightning.inference.predict import find_images, predict_files
from tl_lightning.models.module import TransferClassifier


@pytest.fixture
def checkpoint(split_folder: Path, tmp_path: Path) -> Path:
    fit_with_checkpoints(tiny_model(), split_folder, tmp_path / "ckpt", max_epochs=1)
    return tmp_path / "ckpt" / "best.ckpt"


def test_predict_csv_rows_match_predict_step(checkpoint: Path, split_folder: Path, tmp_path: Path):
    out = tmp_path / "predictions.csv"
    main([str(checkpoint), str(split_folder / "test"), "--out", str(out), "--batch-size", "4"])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    dm = tiny_data(split_folder, data_config=model.data_config)
    dm.setup("test")
    expected = torch.cat([model.predict_step(batch, i) for i, batch in enumerate(dm.test_dataloader())])
    files = [p for p, _ in dm.samples("test")]
    assert [Path(r["path"]) for r in rows] == files  # same order: class folders, then file names
    got = torch.tensor([[float(r[f"p_{c}"]) for c in model.class_names] for r in rows])
    assert torch.allclose(got, expected, atol=1e-5)
    assert [r["class"] for r in rows] == [model.class_names[i] for i in expected.argmax(-1)]


def test_flip_tta_averages_two_views(checkpoint: Path, split_folder: Path):
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    files = find_images([split_folder / "val"])
    plain, tta = predict_files(model, files).probabilities, predict_files(model, files, tta=True).probabilities
    assert torch.allclose(tta.sum(-1), torch.ones(len(files)), atol=1e-5)
    assert not torch.allclose(plain, tta)


def test_bad_inputs_are_named(checkpoint: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt' does not exist"):
        main([str(tmp_path / "missing.ckpt"), str(bad)])


def test_a_bad_file_is_skipped_and_named_and_the_others_are_predicted(
    checkpoint: Path, split_folder: Path, tmp_path: Path
):
    folder = tmp_path / "mixed"
    shutil.copytree(split_folder / "test" / "cat", folder)
    (folder / "broken.jpg").write_bytes(b"not an image")
    good = Image.open(next(folder.glob("*.png")))
    good.save(folder / "truncated.png")
    (folder / "truncated.png").write_bytes((folder / "truncated.png").read_bytes()[:60])
    out = tmp_path / "preds" / "predictions.csv"
    (tmp_path / "preds").mkdir()
    main([str(checkpoint), str(folder), "--out", str(out)])
    with open(out) as f:
        predicted = [Path(r["path"]).name for r in csv.DictReader(f)]
    with open(tmp_path / "preds" / "skipped.csv") as f:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == {"broken.jpg", "truncated.png"} and all(skipped.values())
    assert sorted(predicted) == sorted(p.name for p in (split_folder / "test" / "cat").iterdir())
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    assert predict_files(model, [folder / "broken.jpg"]).files == []


def test_checkpoint_keeps_training_input_statistics(checkpoint: Path, split_folder: Path):
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    stats = model.input_statistics
    assert stats is not None and stats.images == 24  # every training image: 3 classes x 8
    dm = tiny_data(split_folder, data_config=model.data_config)
    dm.setup("fit")
    x = torch.stack([image for image, _ in dm.val_dataloader().dataset])
    assert stats.distance(x)[0] < 4  # same source: no warning
    assert len(stats.mean_of_means) == 3


def test_images_unlike_the_training_data_are_warned_about(
    checkpoint: Path, split_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """Training images are one saturated colour channel plus mild noise; uniform noise from another 'sensor' is not."""
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    same = find_images([split_folder / "test"])
    with caplog.at_level("WARNING", logger="tl_lightning.inference.predict"):
        predict_files(model, same, batch_size=4)
    assert not caplog.records
    rng = np.random.default_rng(0)
    (tmp_path / "noise").mkdir()
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "noise" / f"{i}.png")
    noise = find_images([tmp_path / "noise"])
    with caplog.at_level("WARNING", logger="tl_lightning.inference.predict"):
        predict_files(model, [*same[:4], *noise], batch_size=4)
    assert len(caplog.records) == 3  # the batches of noise, not the first (test images)
    assert f"{noise[0]} .. {noise[3]}" in caplog.records[0].getMessage()
    assert "training standard deviations" in caplog.records[0].getMessage()


def test_input_statistics_flag_a_shifted_batch_only():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(200, 3, 8, 8, generator=generator) + torch.randn(200, 3, 1, 1, generator=generator)
    stats = InputStatistics.of(train)
    alike = torch.randn(16, 3, 8, 8, generator=generator) + torch.randn(16, 3, 1, 1, generator=generator)
    assert stats.check(alike) is None
    shifted = alike.clone()
    shifted[:, 2] += 6  # one channel, six training standard deviations of the per-image mean
    assert "channel 2 mean" in stats.check(shifted)
    assert "channel 0 std" in stats.check(alike * torch.tensor([8.0, 1, 1]).view(1, 3, 1, 1))
