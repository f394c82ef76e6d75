import json
import math
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_train, tiny_data, tiny_model

from tl_lightning.app.train import find_lr
from tl_lightning.finetuning.lr_finder import lr_range_test
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.utils import BadValue


def test_range_test_restores_weights_flags_and_modes(split_folder: Path):
    model = tiny_model()
    finetuning = LayerFinetuning(milestones={1: "all"})
    finetuning.apply(model, epoch=0, set_bn_modes=False)  # as during training: backbone frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    data = tiny_data(split_folder, data_config=model.data_config)
    data.setup("fit")
    result = lr_range_test(model, data.train_dataloader(), finetuning, epoch=1, phase="unfrozen", steps=12)
    assert 3 <= len(result.lrs) <= 12 and result.lrs == sorted(result.lrs)  # may stop early once the loss diverges
    assert math.isfinite(result.suggestion) and result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())


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
    data.setup("fit")
    result = lr_range_test(model, data.train_dataloader(), LayerFinetuning({0: "all"}), epoch=0, phase="x", steps=4)
    assert result.ratios == trained


def test_a_range_test_that_diverges_at_once_says_so_instead_of_suggesting_nan(tmp_path: Path):
    overrides = ["task=lr_find", "lr_find.min_lr=1e4", "lr_find.max_lr=1e8", f"paths.output_dir={tmp_path}", *FAST]
    with pytest.raises(
        BadValue, match=r"diverged after \d steps, at model.lr=.*Start it lower \(lr_find.min_lr, now 10000\)"
    ):
        find_lr(compose_train(overrides))
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["override"] is None and (tmp_path / "lr_find.png").stat().st_size > 0
