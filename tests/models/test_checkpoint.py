"""A checkpoint's record (classes, preprocessing, temperature, the abstention rule) read without its weights."""

import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
from conftest import tiny_model

from tl_lightning.models.checkpoint import read_record
from tl_lightning.utils import BadValue


def test_the_record_is_the_modules_and_a_damaged_file_is_named_in_one_sentence(tmp_path: Path):
    model = tiny_model()
    model.temperature.fill_(0.5)
    path = tmp_path / "model.ckpt"
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    record = read_record(path)
    assert record["class_names"] == model.class_names and record["temperature"] == 0.5
    assert record["data_config"] == dict(model.data_config)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BadValue, match=rf"^Checkpoint '{re.escape(str(truncated))}'"):
        read_record(truncated)
