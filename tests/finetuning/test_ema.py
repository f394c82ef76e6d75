from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import CLASSES, compose_train, tiny_data, tiny_model, tiny_trainer, write_images
from lightning.pytorch.callbacks import ModelCheckpoint

from tl_lightning.finetuning.ema import EMAEvaluation
from tl_lightning.finetuning.unfreezing import LayerFinetuning


def test_ema_is_scored_beside_the_raw_weights_and_saved(split_folder: Path, tmp_path: Path):
    ema = EMAEvaluation(decay=0.9)
    model = tiny_model(lr=1e-2)
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = tiny_trainer(max_epochs=2, enable_checkpointing=True, callbacks=[LayerFinetuning({0: "all"}), ema, last])
    trainer.fit(model, tiny_data(split_folder, model))
    assert {"val/acc", "val/acc_ema"} <= set(trainer.callback_metrics)
    averaged = ema.ema.module.state_dict()
    assert not torch.equal(averaged["1.0.weight"], model.head[0].weight)  # the average lags the raw weights
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("EMAEvaluation")]
    assert all(torch.equal(state["ema"][k], averaged[k]) for k in averaged)

    resumed = EMAEvaluation(decay=0.9)
    resumed.load_state_dict(state)
    tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning({0: "all"}), resumed]).validate(
        tiny_model(), tiny_data(split_folder)
    )
    assert all(torch.equal(resumed.ema.module.state_dict()[k], averaged[k]) for k in averaged)


def test_ema_is_off_by_default_and_on_with_one_override():
    assert "ema" not in compose_train(["paths.output_dir=unused"]).callbacks
    assert compose_train(["callbacks=[default,ema]", "paths.output_dir=unused"]).callbacks.ema.decay == 0.998


class ValAcc(pl.Callback):
    def __init__(self):
        self.pairs = []

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.pairs.append((float(metrics["val/acc"]), float(metrics["val/acc_ema"])))


def test_an_average_that_equals_the_weights_scores_what_they_score_on_an_unbalanced_split(split_folder: Path):
    for extra in sorted((split_folder / "val").glob("*/*_[12].png"))[:2]:  # 1 / 3 / 3 images a class
        extra.unlink()
    write_images(split_folder / "val", classes=CLASSES[1:], per_class=5, seed=4)  # 1 / 5 / 5
    ema, seen = EMAEvaluation(decay=0.0, warmup=False), ValAcc()  # decay 0: the average is the weights
    model = tiny_model(lr=1e-2)
    tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning({0: "all"}), ema, seen]).fit(
        model, tiny_data(split_folder, model)
    )
    assert len(seen.pairs) >= 2
    assert all(acc == pytest.approx(acc_ema) for acc, acc_ema in seen.pairs)
