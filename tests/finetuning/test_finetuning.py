import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import CLASSES, tiny_data, tiny_model, tiny_trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from tl_lightning.finetuning.unfreezing import LayerFinetuning, gradual, top_k
from tl_lightning.models.groups import discriminative_lrs
from tl_lightning.models.lr_schedules import FineTuneOneCycle
from tl_lightning.models.module import TransferClassifier


class Recorder(pl.Callback):
    """Per epoch: which groups train and the LR each named param group really has at its first step."""

    def __init__(self):
        self.trainable: dict[int, list[bool]] = {}
        self.lrs: dict[int, dict[str, float]] = {}
        self.bn_training: dict[int, list[bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        epoch = trainer.current_epoch
        if epoch in self.lrs:
            return
        groups = pl_module.layer_groups()
        self.trainable[epoch] = [all(p.requires_grad for _, p in g.params) for g in groups]
        self.lrs[epoch] = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        self.bn_training[epoch] = [bn.training for g in groups for bn in g.batchnorms]


class BetaRecorder(pl.Callback):
    """Adam's first beta at each epoch's first step, and at every step."""

    def __init__(self):
        self.first: dict[int, float] = {}
        self.all: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        beta = trainer.optimizers[0].param_groups[0]["betas"][0]
        self.first.setdefault(trainer.current_epoch, beta)
        self.all.append(beta)


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model, prefix: str) -> bool:
    after = model.backbone.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_frozen_backbone_weights_and_bn_stats_stay_bit_identical(split_folder: Path):
    model = tiny_model()
    before, head_before = backbone_state(model), model.head[-1].weight.clone()
    recorder = Recorder()
    trainer = tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning(milestones={}), recorder])
    trainer.fit(model, tiny_data(split_folder, model))  # validation runs after every epoch, sanity check first
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen tensor moved"
    assert not torch.equal(head_before, model.head[-1].weight)
    assert recorder.bn_training == {0: [False] * 13, 1: [False] * 13}
    assert recorder.trainable[1] == [False] * 6 + [True]


def test_unfreeze_milestone_gives_each_group_its_discriminative_lr(split_folder: Path):
    model = tiny_model(lr=1e-2, lr_mult=100.0, scheduler=None)
    before = backbone_state(model)
    recorder = Recorder()
    callback = LayerFinetuning(milestones={1: 2, 2: "all"})
    tiny_trainer(max_epochs=3, callbacks=[callback, recorder]).fit(model, tiny_data(split_folder, model))

    assert recorder.trainable == {
        0: [False] * 6 + [True],
        1: [False] * 4 + [True] * 3,
        2: [True] * 7,
    }
    names = [g.name for g in model.layer_groups()]
    expected = dict(zip(names, discriminative_lrs(len(names), 1e-2, 100.0), strict=True))
    for epoch in range(3):
        lrs = recorder.lrs[epoch]
        assert {n: lrs[n] for n in names} == pytest.approx(expected, rel=1e-12)
        assert {n: lrs[f"{n}/no_decay"] for n in names} == pytest.approx(expected, rel=1e-12)
    assert changed(before, model, "blocks.4")
    # unfrozen groups keep BatchNorm statistics fixed by default
    stats = [k for k in before if "running_" in k]
    assert all(torch.equal(before[k], model.backbone.state_dict()[k]) for k in stats)


def test_unfrozen_bn_updates_statistics_only_when_asked(split_folder: Path):
    model = tiny_model()
    before = backbone_state(model)
    callback = LayerFinetuning(milestones={1: 1}, update_bn_stats=True)
    tiny_trainer(max_epochs=2, callbacks=[callback]).fit(model, tiny_data(split_folder, model))
    after = model.backbone.state_dict()
    assert not torch.equal(before["bn2.running_mean"], after["bn2.running_mean"])  # last group: unfrozen
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # stem: still frozen


def test_train_bn_trains_bn_affine_but_not_statistics_or_convolutions(split_folder: Path):
    model = tiny_model()
    before = backbone_state(model)
    tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={}, train_bn=True)]).fit(
        model, tiny_data(split_folder, model)
    )
    after = model.backbone.state_dict()
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])
    assert torch.equal(before["bn1.running_var"], after["bn1.running_var"])
    assert torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])


def test_train_bn_with_update_bn_stats_trains_frozen_bn_in_train_mode_as_fastai_does(split_folder: Path):
    model = tiny_model()
    before = backbone_state(model)
    recorder = Recorder()
    callback = LayerFinetuning(milestones={}, train_bn=True, update_bn_stats=True)
    tiny_trainer(max_epochs=1, callbacks=[callback, recorder]).fit(model, tiny_data(split_folder, model))
    after = model.backbone.state_dict()
    assert recorder.bn_training[0] == [True] * 13
    assert not torch.equal(before["bn1.running_var"], after["bn1.running_var"])  # statistics follow the data
    assert not torch.equal(before["bn1.weight"], after["bn1.weight"])
    assert torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])  # the body itself stays frozen
    model.eval()
    callback.apply_bn_modes(model)
    assert not any(bn.training for g in model.layer_groups() for bn in g.batchnorms)  # evaluation: eval mode


def test_fine_tune_one_cycle_gives_every_group_fastais_lrs_and_betas(split_folder: Path):
    # One frozen epoch, then two: the unfrozen cycle starts at epoch 1.
    scheduler = partial(FineTuneOneCycle, frozen_epochs=1)
    model = tiny_model(lr=1e-2, lr_mult=100.0, lr_spread="flat", scheduler=scheduler)
    recorder, betas = Recorder(), BetaRecorder()
    trainer = tiny_trainer(max_epochs=3, callbacks=[LayerFinetuning(milestones={1: "all"}), recorder, betas])
    trainer.fit(model, tiny_data(split_folder, model, batch_size=2))
    first = model.layer_groups()[0].name
    assert recorder.lrs[0]["head"] == pytest.approx(2e-2 / 25)  # the frozen cycle starts at 2 lr / 25
    assert recorder.lrs[1]["head"] == pytest.approx(1e-2 / 5)  # the unfrozen one at lr / 5 ...
    assert recorder.lrs[1][first] == pytest.approx(1e-4 / 5)  # ... every group at its own
    assert betas.first[0] == betas.first[1] == 0.95
    assert min(betas.all) == pytest.approx(0.85, abs=0.02)  # cycled down near the peak LR


def test_fine_tune_one_cycle_resumes_on_the_same_lrs_and_betas():
    def scheduled(steps: int) -> tuple[torch.optim.Optimizer, FineTuneOneCycle]:
        optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)
        scheduler = FineTuneOneCycle(optimizer, total_steps=50, steps_per_epoch=5)
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
        return optimizer, scheduler

    straight, _ = scheduled(20)
    optimizer, scheduler = scheduled(0)
    _, saved = scheduled(12)
    scheduler.load_state_dict(saved.state_dict())
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == straight.param_groups[0]["lr"]
    assert optimizer.param_groups[0]["betas"] == straight.param_groups[0]["betas"]


def test_warmup_cosine_scales_every_group_by_the_same_factor(split_folder: Path):
    model = tiny_model(lr=1e-2, lr_mult=10.0)
    recorder = Recorder()
    tiny_trainer(max_epochs=3, callbacks=[LayerFinetuning(milestones={1: "all"}), recorder]).fit(
        model, tiny_data(split_folder, model)
    )
    names = [g.name for g in model.layer_groups()]
    base = dict(zip(names, discriminative_lrs(len(names), 1e-2, 10.0), strict=True))
    factors = [{round(recorder.lrs[e][n] / base[n], 12) for n in names} for e in range(3)]
    assert all(len(f) == 1 for f in factors)
    assert factors[1] != factors[2]  # the schedule moved


def test_reduce_lr_on_plateau_keeps_working_across_an_unfreeze(split_folder: Path):
    scheduler = partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0, factor=0.5, threshold=10.0)
    model = tiny_model(lr=1e-2, lr_mult=10.0, scheduler=scheduler)
    recorder = Recorder()
    tiny_trainer(max_epochs=3, callbacks=[LayerFinetuning(milestones={1: "all"}), recorder]).fit(
        model, tiny_data(split_folder, model)
    )
    first = model.layer_groups()[0].name
    # threshold=10 means no epoch counts as an improvement, so every epoch end halves every group's LR,
    # including groups that were frozen when the scheduler was created.
    assert recorder.lrs[2][first] == pytest.approx(recorder.lrs[0][first] / 4)
    assert recorder.lrs[2]["head"] == pytest.approx(1e-2 / 4)


def test_bad_milestones_are_rejected_with_an_example():
    with pytest.raises(ValueError, match=r"Bad finetuning milestone 3: 'most'.*\{5: all\}"):
        LayerFinetuning(milestones={3: "most"})


@pytest.mark.slow
def test_ddp_ranks_stay_identical_after_an_unfreeze(split_folder: Path, tmp_path: Path):
    """Lightning #20340: parameters frozen when DDP wraps the model must still be averaged once unfrozen."""
    script = Path(__file__).parents[1] / "ddp_unfreeze.py"
    env = os.environ | {"PYTHONPATH": str(script.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(split_folder), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert float(rank0.pop("largest_gradient_gap")) == 0.0 == float(rank1.pop("largest_gradient_gap"))
    pl.seed_everything(0)  # the script's seed: the weights both ranks started from
    initial = tiny_model().state_dict()
    assert rank0.keys() == rank1.keys()
    differing = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
    assert differing == []
    assert not torch.equal(rank0["backbone.conv_stem.weight"], initial["backbone.conv_stem.weight"])


STRATEGY_GROUPS = {  # trainable backbone groups of an 8-group backbone in epochs 0..6
    "feature_extraction": [0, 0, 0, 0, 0, 0, 0],
    "lp_ft": [0, 0, 0, 0, 0, 8, 8],
    "top_k": [2, 2, 2, 2, 2, 2, 2],
    "full": [8, 8, 8, 8, 8, 8, 8],
    "gradual": [0, 1, 1, 2, 2, 3, 3],
    "milestones": [0, 0, 2, 2, 4, 4, 8],
}


@pytest.mark.parametrize("strategy", STRATEGY_GROUPS)
def test_each_strategy_config_unfreezes_on_its_schedule(strategy: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(Path(__file__).parents[2] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"finetuning={strategy}", "paths.output_dir=unused"])
    callback = instantiate(cfg.callbacks.finetuning)
    assert isinstance(callback, LayerFinetuning)
    assert [callback.trainable_groups(epoch, num_groups=8) for epoch in range(7)] == STRATEGY_GROUPS[strategy]


class StepLR(pl.Callback):
    """The LR of every named group as `optimizer.step()` sees it, and as it is after the step."""

    def __init__(self):
        self.during: list[dict[str, float]] = []
        self.after: list[dict[str, float]] = []

    def on_train_start(self, trainer, pl_module):  # registered after LayerFinetuning's hooks (on_fit_start)
        trainer.optimizers[0].register_step_pre_hook(lambda opt, *_: self.during.append(_lrs(opt)))

    def on_train_batch_end(self, trainer, *args):
        self.after.append(_lrs(trainer.optimizers[0]))


def _lrs(optimizer) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_rewarm_ramps_newly_unfrozen_groups_inside_the_step_only(split_folder: Path):
    model = tiny_model(lr=1e-2, lr_mult=1.0, scheduler=None)
    steps = StepLR()
    callback = LayerFinetuning(milestones={1: 1}, rewarm_epochs=0.5)
    tiny_trainer(max_epochs=3, callbacks=[callback, steps]).fit(model, tiny_data(split_folder, model))
    per_epoch = 6  # 24 training images, batches of 4
    last = "blocks.4.0+conv_head+bn2"  # the group unfrozen at epoch 1; ramp = 3 steps
    assert [s[last] for s in steps.during[per_epoch : 2 * per_epoch]] == pytest.approx(
        [1e-2 / 4, 2e-2 / 4, 3e-2 / 4, 1e-2, 1e-2, 1e-2]
    )
    assert all(s["head"] == 1e-2 and s["conv_stem+bn1"] == 1e-2 for s in steps.during)
    assert all(set(s.values()) == {1e-2} for s in steps.after)  # the scheduler never sees the ramp


@pytest.mark.parametrize(
    ("callback", "expected"),
    [
        (LayerFinetuning(milestones={}), [0, 0, 0]),
        (LayerFinetuning(milestones={1: "all"}), [0, 6, 6]),
        (top_k(2), [2, 2, 2]),
        (LayerFinetuning(milestones={0: "all"}), [6, 6, 6]),
        (gradual(every=1, start=1), [0, 1, 2]),
    ],
    ids=["feature_extraction", "lp_ft", "top_k", "full", "gradual"],
)
def test_each_strategy_trains_its_groups_at_their_exact_lrs(callback, expected, split_folder: Path):
    model = tiny_model(lr=1e-2, lr_mult=32.0, scheduler=None)
    recorder = Recorder()
    tiny_trainer(max_epochs=3, callbacks=[callback, recorder]).fit(model, tiny_data(split_folder, model))
    names = [g.name for g in model.layer_groups()]
    exact = dict(zip(names, discriminative_lrs(len(names), 1e-2, 32.0), strict=True))
    for epoch, count in enumerate(expected):
        assert recorder.trainable[epoch] == [False] * (6 - count) + [True] * (count + 1)
        assert {n: recorder.lrs[epoch][n] for n in names} == exact


def test_lr_factors_set_each_group_explicitly(split_folder: Path):
    factors = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0]
    model = tiny_model(lr=1e-2, lr_factors=factors, scheduler=None)
    recorder = Recorder()
    tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={0: "all"}), recorder]).fit(
        model, tiny_data(split_folder, model)
    )
    names = [g.name for g in model.layer_groups()]
    assert [recorder.lrs[0][n] for n in names] == pytest.approx([1e-2 * f for f in factors])
    with pytest.raises(ValueError, match=r"lr_factors has 2 entries for 7 groups: \['conv_stem\+bn1'"):
        tiny_model(lr_factors=[1.0, 1.0]).configure_optimizers()


class FilteredOptimizer(TransferClassifier):
    """Lightning's documented pattern, which cannot work with scheduled unfreezing."""

    def configure_optimizers(self):
        return torch.optim.AdamW(filter(lambda p: p.requires_grad, self.parameters()))


def test_optimizer_without_the_frozen_parameters_is_refused(split_folder: Path):
    model = FilteredOptimizer(
        "test_efficientnet", num_classes=3, class_names=list(CLASSES), pretrained=False, image_size=32
    )
    with pytest.raises(MisconfigurationException, match=r"backbone parameters .* are in no optimizer param group"):
        tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning()]).fit(model, tiny_data(split_folder, model))


def test_phase_changes_log_a_table_of_groups(split_folder: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="tl_lightning.finetuning.unfreezing")
    model = tiny_model(scheduler=None, lr=1e-2, lr_mult=1.0)
    tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning(milestones={1: 1})]).fit(
        model, tiny_data(split_folder, model)
    )
    tables = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Finetuning phase")]
    assert [t.splitlines()[0] for t in tables] == ["Finetuning phase at epoch 0:", "Finetuning phase at epoch 1:"]
    last = model.layer_groups()[-2]
    assert tables[1].splitlines()[-1].split() == [last.name, "yes", f"{last.num_params:,}", "1.00e-02", "eval"]
    assert tables[0].splitlines()[-1].split()[:2] == [last.name, "no"]


class FeatureNoise(pl.Callback):
    """Per epoch, at the first step: do two train-mode passes of one batch through the backbone agree?"""

    def __init__(self):
        self.constant: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch not in self.constant:
            with torch.no_grad():
                first, second = pl_module.backbone(batch[0]), pl_module.backbone(batch[0])
            self.constant[trainer.current_epoch] = torch.equal(first, second)


def test_a_frozen_backbone_holds_droppath_and_dropout_still_and_the_unfrozen_one_uses_them(split_folder: Path):
    model = tiny_model(backbone_kwargs={"drop_path_rate": 0.5, "drop_rate": 0.5})
    groups = model.layer_groups()
    assert sum(len(g.stochastic) for g in groups) > 0 and model.backbone in groups[-2].stochastic
    noise = FeatureNoise()
    tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning(milestones={1: "all"}), noise]).fit(
        model, tiny_data(split_folder, model)
    )
    assert noise.constant == {0: True, 1: False}
