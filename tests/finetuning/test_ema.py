from pathlib import Path

import torch
from conftest import compose_train, tiny_data, tiny_model, tiny_trainer
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
