"""Run by test_finetuning.py as `python tests/ddp_unfreeze.py DATA OUT`: 2-process CPU DDP (gloo) that
unfreezes the backbone at epoch 1 and saves each rank's final weights, to compare them."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from conftest import tiny_data, tiny_model

from tl_lightning.finetuning.unfreezing import LayerFinetuning

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    pl.seed_everything(int(sys.argv[3]) if len(sys.argv) > 3 else 0)  # same start; DDP broadcasts anyway
    accelerator = sys.argv[4] if len(sys.argv) > 4 else "cpu"  # gpu: NCCL (tests/gpu)
    model = tiny_model()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=2,
        strategy="ddp",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[LayerFinetuning(milestones={1: "all"})],
    )
    trainer.fit(model, tiny_data(data, model, batch_size=2))
    torch.save(model.state_dict(), out / f"rank{trainer.global_rank}.pt")
