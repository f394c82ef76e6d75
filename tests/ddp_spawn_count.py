"""Run by test_ddp.py as `python tests/ddp_spawn_count.py DATA OUT`: a 2-process CPU `ddp_spawn` fit and test,
writing how many validation and test samples the synced metrics counted."""

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from conftest import tiny_data, tiny_model

from tl_lightning.finetuning.unfreezing import LayerFinetuning

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    pl.seed_everything(0)
    model = tiny_model(backbone="test_resnet")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[LayerFinetuning(milestones={0: "all"})],
    )
    datamodule = tiny_data(data, model, batch_size=4)
    trainer.fit(model, datamodule)
    counted = {"val": float(trainer.callback_metrics["val/samples"])}
    counted["test"] = trainer.test(model, datamodule)[0]["test/samples"]
    (out / "counted.json").write_text(json.dumps(counted))
