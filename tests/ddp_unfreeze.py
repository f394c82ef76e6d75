"""Run by test_finetuning.py as `python tests/ddp_unfreeze.py DATA OUT`: 2-process CPU DDP (gloo) that
unfreezes the backbone at epoch 1 and saves each rank's final weights, to compare them, and the largest gradient
difference between the ranks seen at `on_before_optimizer_step`: the hook Lightning calls after an fp16
GradScaler has unscaled and checked the gradients, by which point every gradient must already be averaged."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from conftest import tiny_data, tiny_model

from tl_lightning.finetuning.unfreezing import LayerFinetuning


class GradientsAgree(pl.Callback):
    """Listed before the finetuning callback, so it sees the gradients as the scaler's check does."""

    def __init__(self):
        self.largest = 0.0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        flat = torch.cat([p.grad.flatten() for p in pl_module.parameters() if p.grad is not None])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        self.largest = max(self.largest, float((gathered[0] - gathered[1]).abs().max()))


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
        callbacks=[agree := GradientsAgree(), LayerFinetuning(milestones={1: "all"})],
    )
    trainer.fit(model, tiny_data(data, model, batch_size=2))
    torch.save(
        model.state_dict() | {"largest_gradient_gap": torch.tensor(agree.largest)},
        out / f"rank{trainer.global_rank}.pt",
    )
