"""The audit on a deliberately nasty folder: exact findings, bad files skipped, training still completes."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_data, tiny_model, tiny_trainer, write_images
from PIL import Image

from tl_lightning.app.audit import main as audit_main
from tl_lightning.data.datamodule import ImageFolderDataModule
from tl_lightning.data.images import load_rgb
from tl_lightning.finetuning.unfreezing import LayerFinetuning


def make_nasty_folder(root: Path) -> Path:
    write_images(root / "train", classes=("cat", "dog"), per_class=6)
    write_images(root / "val", classes=("cat", "dog"), per_class=2, seed=5)
    cat = root / "train" / "cat"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="JPEG")
    (cat / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "notes.jpg").write_text("this is a text file with an image name")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(cat / "deep.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cat / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (12, 6), (0, 0, 200)).save(cat / "rotated.jpg", exif=exif)
    Image.new("RGBA", (8, 8), (0, 200, 0, 128)).save(cat / "rgba.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(cat / "palette.gif")
    (cat / "readme.txt").write_text("not an image type")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / ".ipynb_checkpoints" / "copy.png")
    return root


def test_audit_reports_exactly_what_is_wrong(tmp_path: Path):
    root = make_nasty_folder(tmp_path / "nasty")
    dm = ImageFolderDataModule(root)
    report = dm.audit_report if dm.splits else None
    cat = root / "train" / "cat"
    assert set(report.bad) == {str(cat / "truncated.jpg"), str(cat / "empty.jpg"), str(cat / "notes.jpg")}
    assert report.bad[str(cat / "empty.jpg")] == "empty file (0 bytes)"
    assert report.bad[str(cat / "notes.jpg")] == "not an image"
    assert "truncated" in report.bad[str(cat / "truncated.jpg")].lower()
    assert sorted(report.ignored) == [str(root / "train" / ".ipynb_checkpoints"), str(cat / "readme.txt")]
    assert report.modes == {"RGB": 17, "I;16": 1, "CMYK": 1, "RGBA": 1, "P": 1}
    assert report.counts["train"] == {"cat": 11, "dog": 6}
    assert report.imbalance_ratio == pytest.approx(11 / 6)
    assert report.duplicates == []
    assert all(p.name not in {"truncated.jpg", "empty.jpg", "notes.jpg"} for p, _ in dm.samples("train"))


def test_training_on_the_nasty_folder_completes_with_bad_files_skipped(tmp_path: Path):
    root = make_nasty_folder(tmp_path / "nasty")
    model = tiny_model(class_names=["cat", "dog"], num_classes=2)
    trainer = tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning()])
    trainer.fit(model, tiny_data(root, model))
    assert trainer.state.finished and trainer.global_step == 4  # 17 usable images, batches of 4, last dropped


def test_bad_files_can_stop_the_run_instead(tmp_path: Path):
    root = make_nasty_folder(tmp_path / "nasty")
    with pytest.raises(ValueError, match=r"3 files cannot be read as images .*empty\.jpg: empty file"):
        _ = ImageFolderDataModule(root, on_bad_image="raise").splits


def test_empty_class_is_an_error_naming_it(tmp_path: Path):
    root = make_nasty_folder(tmp_path / "nasty")
    (root / "train" / "owl").mkdir()
    with pytest.raises(ValueError, match=r"Class folders without usable images: .*train/owl"):
        _ = ImageFolderDataModule(root).splits


def test_a_class_of_only_bad_files_is_empty_too(tmp_path: Path):
    root = make_nasty_folder(tmp_path / "nasty")
    (root / "train" / "owl").mkdir()
    (root / "train" / "owl" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"without usable images: .*owl"):
        _ = ImageFolderDataModule(root).splits


def test_duplicates_across_splits_are_reported(split_folder: Path):
    original = split_folder / "train" / "cat" / "cat_0.png"
    copy = split_folder / "test" / "cat" / "leaked.png"
    copy.write_bytes(original.read_bytes())
    dm = ImageFolderDataModule(split_folder)
    with pytest.warns(UserWarning, match="byte-identical across splits"):
        _ = dm.splits
    assert dm.audit_report.duplicates == [sorted([str(copy), str(original)])]


def test_every_odd_image_decodes_to_the_right_pixels(tmp_path: Path):
    cat = make_nasty_folder(tmp_path / "nasty") / "train" / "cat"
    assert load_rgb(cat / "deep.png")[0, 0].tolist() == [156, 156, 156]  # 40000 / 65535 * 255, not clipped
    assert load_rgb(cat / "rotated.jpg").shape == (12, 6, 3)  # EXIF orientation applied
    red = load_rgb(cat / "cmyk.jpg")[4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # CMYK (0, 255, 255, 0) is red
    assert load_rgb(cat / "rgba.png")[0, 0].tolist() == [0, 200, 0]
    assert load_rgb(cat / "palette.gif")[0, 0].tolist() == [10, 20, 30]


def test_audit_command_prints_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = make_nasty_folder(tmp_path / "nasty")
    audit_main([str(root), "--json", str(tmp_path / "audit.json")])
    printed = capsys.readouterr().out
    assert "bad files skipped: 3" in printed and "ignored (hidden or not an image type): 2" in printed
    assert f"    {root / 'train' / '.ipynb_checkpoints'}\n" in printed  # named, as bad files are
    assert f"    {root / 'train' / 'cat' / 'readme.txt'}\n" in printed
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["counts"]["train"] == {"cat": 11, "dog": 6} and len(saved["bad"]) == 3


def test_heavy_imbalance_is_warned_about_with_a_hint(tmp_path: Path):
    write_images(tmp_path / "train", classes=("common",), per_class=24)
    write_images(tmp_path / "train", classes=("rare",), per_class=2, seed=1)
    write_images(tmp_path / "val", classes=("common", "rare"), per_class=1, seed=2)
    dm = ImageFolderDataModule(tmp_path)
    with pytest.warns(
        UserWarning, match=r"12x the images of the smallest.\nHINT: .*model\.imbalance\.class_weights=balanced"
    ):
        _ = dm.splits
    assert dm.audit_report.imbalance_ratio == 12.0


def test_audit_cache_rechecks_only_changed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import tl_lightning.data.audit as audit

    root = make_nasty_folder(tmp_path / "nasty")
    checked: list[str] = []
    real = audit.check_file
    monkeypatch.setattr(audit, "check_file", lambda path: checked.append(path.name) or real(path))
    first = ImageFolderDataModule(root, audit_cache=tmp_path / "cache")
    _ = first.splits
    assert len(checked) == 24  # every file decoded once
    checked.clear()
    second = ImageFolderDataModule(root, audit_cache=tmp_path / "cache")
    _ = second.splits
    assert checked == []  # nothing decoded again
    assert second.audit_report.to_dict() == first.audit_report.to_dict()

    victim = root / "train" / "dog" / "dog_0.png"
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the first audit: new size, new mtime
    third = ImageFolderDataModule(root, audit_cache=tmp_path / "cache")
    _ = third.splits
    assert checked == ["dog_0.png"]
    assert str(victim) in third.audit_report.bad

    # Replaced by a broken file of the same size, its old modification time put back: still checked again
    other = root / "train" / "dog" / "dog_1.png"
    before = other.stat()
    replacement = other.with_suffix(".tmp")
    replacement.write_bytes(b"\0" * before.st_size)
    os.replace(replacement, other)
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    checked.clear()
    fourth = ImageFolderDataModule(root, audit_cache=tmp_path / "cache")
    _ = fourth.splits
    assert checked == ["dog_1.png"] and str(other) in fourth.audit_report.bad

    (tmp_path / "cache" / "audit.json").write_text("{not json")
    checked.clear()
    _ = ImageFolderDataModule(root, audit_cache=tmp_path / "cache").splits
    assert len(checked) == 24  # an unreadable cache is ignored, never trusted
