import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_train, tiny_data, tiny_model, tiny_trainer
from lightning.pytorch.callbacks import Callback

from tl_lightning.app.train import find_lr
from tl_lightning.finetuning.lr_finder import lr_range_test
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.utils import BadValue

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


def test_range_test_restores_weights_flags_and_modes(split_folder: Path):
    model = tiny_model()
    finetuning = LayerFinetuning(milestones={1: "all"})
    finetuning.apply(model, epoch=0, set_bn_modes=False)  # as during training: backbone frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    data = tiny_data(split_folder, data_config=model.data_config)
    result = lr_range_test(model, data, finetuning, epoch=1, phase="unfrozen", steps=12, trainer_options=CPU)
    assert 3 <= len(result.lrs) <= 12 and result.lrs == sorted(result.lrs)  # may stop early once the loss diverges
    assert len(result.losses) == len(result.lrs)
    assert math.isfinite(result.suggestion) and result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())


class Steps(Callback):
    """Records, at each training step, each group's LR and what the backbone computed in."""

    def __init__(self, model) -> None:
        self.lrs: list[list[float]] = []
        self.dtypes: set[torch.dtype] = set()
        self.trainable: set[int] = set()
        model.backbone.register_forward_hook(lambda m, i, out: self.dtypes.add(out.dtype) if m.training else None)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.trainable.add(sum(p.requires_grad for p in pl_module.backbone.parameters()))


def test_each_step_runs_through_the_trainer_at_the_swept_lrs_in_its_precision(split_folder: Path):
    """The range test is Lightning's fit loop: the trainer's precision reaches the backbone, every group steps at
    the swept LR times its ratio, and the frozen phase's backbone stays frozen."""
    from tl_lightning.finetuning.lr_finder import LRRangeTest

    model = tiny_model(lr=1e-3, lr_mult=10.0)
    data = tiny_data(split_folder, model, batch_size=4)
    steps = Steps(model)
    test = LRRangeTest(
        LayerFinetuning(milestones={1: "all"}), epoch=0, phase="frozen", min_lr=1e-5, max_lr=1e-2, steps=6
    )
    trainer = tiny_trainer(
        max_steps=6, max_epochs=-1, precision="bf16-mixed", limit_val_batches=0, callbacks=[test, steps]
    )
    trainer.fit(model, data)
    assert steps.dtypes == {torch.bfloat16} and steps.trainable == {0}
    ratios = list(test.result.ratios.values())
    assert len(steps.lrs) == len(test.result.lrs) == 6
    for lr, seen in zip(test.result.lrs, steps.lrs, strict=True):
        assert seen == pytest.approx([lr * r for r in ratios])
    assert test.result.lrs[0] == pytest.approx(1e-5) and test.result.lrs[-1] == pytest.approx(1e-2)


@pytest.mark.slow
def test_lr_find_task_on_digits_writes_suggestions_and_a_plot(tmp_path: Path):
    overrides = ["task=lr_find", "lr_find.steps=30", f"paths.output_dir={tmp_path}", *FAST, "trainer.max_epochs=15"]
    result = find_lr(compose_train(overrides))  # 15 epochs: the default unfreeze at epoch 5 is in the run
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved == result
    suggestions = [v for k, v in saved.items() if k.startswith("lr_find/")]
    assert len(suggestions) == 2 and all(math.isfinite(v) and 1e-6 <= v <= 1.0 for v in suggestions)
    assert saved["override"] == f"model.lr={suggestions[-1]:.2e}"
    assert (tmp_path / "lr_find.png").stat().st_size > 0


def test_range_test_measures_the_optimizer_that_trains(split_folder: Path):
    """With explicit lr_factors, each group's LR relative to model.lr is the same in the range test as in
    configure_optimizers (an earlier LR finder spread lr_mult instead and measured another optimizer)."""
    model = tiny_model(lr=2e-3, lr_mult=10.0)
    factors = [0.01 * (i + 1) for i in range(len(model.layer_groups()) - 1)] + [1.0]
    model = tiny_model(lr=2e-3, lr_mult=10.0, lr_factors=factors, scheduler=None)
    trained = {g["name"]: g["lr"] / 2e-3 for g in model.configure_optimizers()["optimizer"].param_groups}
    assert trained["head"] == 1.0 and min(trained.values()) == factors[0]  # the factors, not lr_mult's spread
    data = tiny_data(split_folder, model)
    finetuning = LayerFinetuning({0: "all"})
    result = lr_range_test(model, data, finetuning, epoch=0, phase="x", steps=4, trainer_options=CPU)
    assert result.ratios == trained


def test_a_range_test_that_diverges_at_once_says_so_instead_of_suggesting_nan(tmp_path: Path):
    overrides = ["task=lr_find", "lr_find.min_lr=1e4", "lr_find.max_lr=1e8", f"paths.output_dir={tmp_path}", *FAST]
    with pytest.raises(
        BadValue, match=r"diverged after \d steps, at model.lr=.*Start it lower \(lr_find.min_lr, now 10000\)"
    ):
        find_lr(compose_train(overrides))
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["override"] is None and (tmp_path / "lr_find.png").stat().st_size > 0
