import csv
from pathlib import Path

import pytest
import torch
from conftest import tiny_data, tiny_model
from test_module import fit_with_checkpoints

from tl_lightning.images import ImageDecodeError
from tl_lightning.module import TransferClassifier
from tl_lightning.predict import find_images, main, predict_files


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
    plain, tta = predict_files(model, files), predict_files(model, files, tta=True)
    assert torch.allclose(tta.sum(-1), torch.ones(len(files)), atol=1e-5)
    assert not torch.allclose(plain, tta)


def test_bad_inputs_are_named(checkpoint: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    model = TransferClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    with pytest.raises(ImageDecodeError, match=r"broken\.jpg"):
        predict_files(model, [bad])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "missing.ckpt"), str(bad)])
