"""Precision, memory layout and compilation from config, on CPU."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose_train, folder_overrides, tiny_data, tiny_model, tiny_trainer

from tl_lightning.app.train import run
from tl_lightning.data.transforms import eval_transform
from tl_lightning.finetuning.unfreezing import LayerFinetuning


class Spy(torch.nn.Module):
    """Not a module in the model: records what the head and the backbone received during training steps."""

    def __init__(self, model) -> None:
        super().__init__()
        self.head_dtypes: set[torch.dtype] = set()
        self.channels_last: set[bool] = set()
        model.head.register_forward_hook(lambda m, i, out: self.head_dtypes.add(out.dtype) if m.training else None)
        model.backbone.register_forward_pre_hook(self.record_layout)

    def record_layout(self, module, inputs) -> None:
        if module.training:
            self.channels_last.add(inputs[0].is_contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_precision_runs_the_forward_in_that_dtype(split_folder: Path, precision: str, dtype: torch.dtype):
    model = tiny_model()
    spy = Spy(model)
    trainer = tiny_trainer(max_epochs=1, precision=precision, callbacks=[LayerFinetuning(milestones={0: "all"})])
    trainer.fit(model, tiny_data(split_folder, model))
    assert spy.head_dtypes == {dtype}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_channels_last_converts_weights_and_batches(split_folder: Path):
    model = tiny_model(performance={"channels_last": True})
    spy = Spy(model)
    tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={0: "all"})]).fit(
        model, tiny_data(split_folder, model)
    )
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really converted, not just square
    assert spy.channels_last == {True}


def test_compile_wraps_the_backbone_in_place(split_folder: Path, tmp_path: Path):
    # The eager backend checks the wiring in seconds; the inductor backend compiles C++ for a minute on a CPU.
    model = tiny_model(performance={"compile": True, "compile_options": {"backend": "eager"}})
    keys = set(model.state_dict())
    trainer = tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={0: "all"})])
    trainer.fit(model, tiny_data(split_folder, model))
    assert model.backbone._compiled_call_impl is not None
    assert set(model.state_dict()) == keys  # checkpoints keep their keys
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


seen: dict[str, object] = {}


class SeeHowItRuns(pl.Callback):
    """What the first training step runs on: the backbone's input layout, its stem's weight layout and the head's
    output dtype (read by the test below)."""

    def on_train_start(self, trainer, pl_module):
        def backbone_input(module, args):
            seen.setdefault("input_channels_last", args[0].is_contiguous(memory_format=torch.channels_last))
            stem = next(p for p in module.parameters() if p.dim() == 4)
            seen.setdefault("weights_channels_last", stem.is_contiguous(memory_format=torch.channels_last))

        def head_output(module, args, out):
            seen.setdefault("head", out.dtype)

        pl_module.backbone.register_forward_pre_hook(backbone_input)
        pl_module.head.register_forward_hook(head_output)


def test_precision_and_layout_from_the_command_line_are_what_trains(flat_folder: Path, tmp_path: Path):
    overrides = [
        *folder_overrides(flat_folder, tmp_path),
        "trainer.precision=bf16-mixed",
        "model.performance.channels_last=true",
        "+callbacks.see._target_=test_precision.SeeHowItRuns",
    ]
    cfg = compose_train(overrides)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.performance.channels_last is True
    seen.clear()
    metrics = run(cfg)
    assert seen == {"head": torch.bfloat16, "input_channels_last": True, "weights_channels_last": True}
    assert metrics["hardware/precision"] == "bf16-mixed" and metrics["test/samples"] > 0


@pytest.mark.parametrize(("precision", "dtype"), [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_the_probe_and_the_feature_cache_extract_in_the_trainers_precision(
    split_folder: Path, precision: str, dtype: torch.dtype
):
    from tl_lightning.finetuning.feature_cache import FrozenFeatureCache
    from tl_lightning.finetuning.probe_floor import ProbeFloor

    model = tiny_model()
    seen: list[torch.dtype] = []  # the backbone's outputs while it is in eval mode: the extraction passes
    model.backbone.register_forward_hook(lambda m, i, out: None if m.training else seen.append(out.dtype))
    data = tiny_data(split_folder, model, train_transform=lambda config: eval_transform(config))
    schedule = LayerFinetuning(milestones={2: "all"})
    callbacks = [schedule, ProbeFloor(keep_probe=False), FrozenFeatureCache(schedule)]
    trainer = tiny_trainer(max_epochs=1, precision=precision, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(model, data)
    assert len(seen) >= 4 and set(seen) == {dtype}  # the probe's train + val passes, then the cache's
