from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit_with_checkpoints, tiny_data, tiny_model, tiny_trainer

from tl_lightning.finetuning.recipe import CONCAT_POOL
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models import Imbalance, Regularization
from tl_lightning.models.losses import mix_batch
from tl_lightning.models.module import TransferClassifier


def test_checkpoint_round_trip_needs_no_arguments(split_folder: Path, tmp_path: Path):
    model = tiny_model(backbone="tf_efficientnet_lite0", weights_file="package:efficientnet_lite0")
    fit_with_checkpoints(model, split_folder, tmp_path, max_epochs=1)
    path = tmp_path / "last.ckpt"
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only: safe to load
    assert raw["tl_lightning"]["weights"]["sha256"] == model.weights_info["sha256"]

    loaded = TransferClassifier.load_from_checkpoint(path)
    assert loaded.class_names == ["cat", "dog", "fox"]
    assert loaded.weights_info == model.weights_info
    assert loaded.data_config["input_size"] == (3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint_from_another_class_set_is_refused_with_both_lists(split_folder: Path, tmp_path: Path):
    fit_with_checkpoints(tiny_model(), split_folder, tmp_path, max_epochs=1)
    owls = tmp_path / "owls"  # the same images, the fox folder named owl: a run of other classes
    for image in split_folder.rglob("*.png"):
        target = owls / image.relative_to(split_folder).parent.as_posix().replace("fox", "owl") / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    other = tiny_model(class_names=["cat", "dog", "owl"])
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['fox'\]; only in this run: \['owl'\]"):
        fit_with_checkpoints(other, owls, tmp_path / "again", max_epochs=2, ckpt_path=tmp_path / "last.ckpt")


class Interrupt(pl.Callback):
    """Stop the run at the end of epoch `after`, as a killed job would (last.ckpt is written at epoch end)."""

    def __init__(self, after: int):
        self.after = after

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.after:
            trainer.should_stop = True


class EpochStartRecorder(pl.Callback):
    def __init__(self):
        self.seen = {}

    def on_train_epoch_start(self, trainer, pl_module):
        groups = trainer.optimizers[0].param_groups
        optimizer = trainer.optimizers[0]
        first = pl_module.backbone.conv_stem.weight  # trainable since epoch 1, so it has Adam state at epoch 2
        self.seen[trainer.current_epoch] = {
            "adam": {k: v.clone() for k, v in optimizer.state[first].items()} if first in optimizer.state else {},
            "step": trainer.global_step,
            "trainable": [all(p.requires_grad for _, p in g.params) for g in pl_module.layer_groups()],
            "lrs": {g["name"]: g["lr"] for g in groups},
        }


def test_resume_after_the_unfreeze_keeps_groups_lrs_step_and_optimizer_state(split_folder: Path, tmp_path: Path):
    """Lightning #21901: a run resumed after the unfreeze epoch must not re-freeze the backbone."""
    straight = EpochStartRecorder()
    pl.seed_everything(0)
    fit_with_checkpoints(tiny_model(), split_folder, tmp_path / "straight", max_epochs=3, callbacks=[straight])

    pl.seed_everything(0)
    fit_with_checkpoints(tiny_model(), split_folder, tmp_path / "first", max_epochs=3, callbacks=[Interrupt(after=1)])
    saved = torch.load(tmp_path / "first" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = EpochStartRecorder()
    model = tiny_model()
    fit_with_checkpoints(
        model,
        split_folder,
        tmp_path / "second",
        max_epochs=3,
        ckpt_path=tmp_path / "first" / "last.ckpt",
        callbacks=[resumed],
    )
    assert list(resumed.seen) == [2]
    assert resumed.seen[2]["trainable"] == straight.seen[2]["trainable"] == [True] * 7
    assert resumed.seen[2]["step"] == straight.seen[2]["step"] == saved["global_step"]
    assert resumed.seen[2]["lrs"] == pytest.approx(straight.seen[2]["lrs"], rel=1e-12)
    adam, straight_adam = resumed.seen[2]["adam"], straight.seen[2]["adam"]
    assert set(adam) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(torch.equal(adam[k], straight_adam[k]) for k in adam)  # the optimizer state is the same too


def test_predict_step_returns_probabilities(split_folder: Path):
    model = tiny_model()
    probs = tiny_trainer().predict(model, tiny_data(split_folder, data_config=model.data_config).val_dataloader())
    probs = torch.cat(probs)
    assert probs.shape == (9, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(9))


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="2 class_names given for num_classes=3"):
        tiny_model(class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_weights has 2 entries for 3 classes"):
        tiny_model(imbalance={"class_weights": [1.0, 2.0]})


def test_class_weights_change_the_loss():
    logits, target = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([1, 1])
    plain = tiny_model(regularization={"label_smoothing": 0.0}).criterion(logits, target)
    weighted = tiny_model(
        regularization={"label_smoothing": 0.0}, imbalance={"class_weights": [1.0, 1.0, 1.0]}
    ).criterion(logits, target)
    assert torch.equal(plain, weighted)
    skewed = tiny_model(regularization={"label_smoothing": 0.0}, imbalance={"class_weights": [1.0, 3.0, 1.0]})
    assert skewed.class_weight.tolist() == [1.0, 3.0, 1.0]
    uneven, mixed = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), torch.tensor([0, 1])  # unequal losses
    assert skewed.criterion(uneven, mixed) > tiny_model(regularization={"label_smoothing": 0.0}).criterion(
        uneven, mixed
    )


def test_the_seed_makes_a_run_with_random_augmentation_bit_identical(split_folder: Path):
    """Albumentations' own RNG ignores `seed_everything`; the dataset reseeds it from torch's."""
    weights = []
    for _ in range(2):
        pl.seed_everything(0)
        model = tiny_model()
        tiny_trainer(max_epochs=2, callbacks=[LayerFinetuning(milestones={1: "all"})]).fit(
            model, tiny_data(split_folder, model)
        )
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_balanced_class_weights_come_from_the_training_split(tmp_path: Path):
    from conftest import FAST, compose_train, write_images

    from tl_lightning.app.train import prepare

    write_images(tmp_path / "data" / "train", classes=("cat",), per_class=12)
    write_images(tmp_path / "data" / "train", classes=("dog", "fox"), per_class=4, seed=1)
    write_images(tmp_path / "data" / "val", per_class=1, seed=2)
    overrides = [
        "data=folder",
        f"data.root={tmp_path / 'data'}",
        "backbone=test_resnet",
        "model.image_size=32",
        f"paths.output_dir={tmp_path / 'out'}",
        "model.imbalance.class_weights=balanced",
        *FAST,
    ]
    model = prepare(compose_train(overrides)).model
    # counts 12, 4, 4 -> inverse frequency normalised to mean 1
    assert model.class_weight.tolist() == pytest.approx([3 / 7, 9 / 7, 9 / 7])
    assert model.hparams.imbalance["class_weights"] == pytest.approx([3 / 7, 9 / 7, 9 / 7])  # saved with the model
    with pytest.raises(ValueError, match=r"balanced_class_weights\(datamodule.class_counts\(\)\)"):
        tiny_model(imbalance={"class_weights": "balanced"})


def test_focal_loss_down_weights_easy_examples():
    from tl_lightning.models.losses import focal_loss

    logits = torch.tensor([[6.0, 0.0, 0.0], [0.2, 0.0, 0.0]])  # an easy and a hard example of class 0
    target = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    focal = torch.stack([focal_loss(logits[i : i + 1], target[i : i + 1]) for i in range(2)])
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), ce.mean())
    assert (focal / ce)[0] < 1e-4 < (focal / ce)[1]
    model = tiny_model(imbalance=Imbalance(loss="focal"), regularization=Regularization(label_smoothing=0.0))
    assert torch.allclose(model.criterion(logits, target), focal.mean())


def test_focal_loss_reduces_as_cross_entropy_does_and_refuses_other_reductions():
    from tl_lightning.models.losses import focal_loss

    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.0]]), torch.tensor([0, 0, 1])
    weight = torch.tensor([1.0, 3.0])
    per_image = focal_loss(logits, target, weight=weight, gamma=0.0, reduction="none")
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(per_image, ce(logits, target, weight=weight, reduction="none"))
    assert torch.allclose(focal_loss(logits, target, weight=weight, gamma=0.0, reduction="sum"), per_image.sum())
    assert torch.allclose(focal_loss(logits, target, weight=weight, gamma=0.0), ce(logits, target, weight=weight))
    with pytest.raises(ValueError, match="reduction='average'"):
        focal_loss(logits, target, reduction="average")


def test_mixup_and_cutmix_give_soft_targets_and_train(split_folder: Path):
    model = tiny_model(regularization=Regularization(mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    mixed, soft = model.mixup(x, y)
    assert mixed.shape == x.shape and soft.shape == (4, 3)
    assert torch.allclose(soft.sum(-1), torch.ones(4))
    assert soft.min() >= 0.1 / 3 - 1e-6  # label smoothing survives mixing
    odd_x, odd_y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    _, odd_soft = mix_batch(model.mixup, odd_x.clone(), odd_y)  # timm alone asserts an even batch
    assert torch.allclose(odd_soft[-1], torch.tensor([0.1 / 3, 0.1 / 3, 1 - 0.2 / 3]))
    sizes = []
    model.on_train_batch_start = lambda batch, batch_idx: sizes.append(len(batch[1]))
    trainer = tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning()])
    trainer.fit(model, tiny_data(split_folder, model, batch_size=3))
    assert any(size % 2 for size in sizes)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    with pytest.raises(ValueError, match="Mixup/CutMix make soft targets"):
        tiny_model(regularization={"mixup_alpha": 0.2}, imbalance={"loss": "focal"})


def test_a_plain_lightning_fit_connects_the_data_itself_and_refuses_other_classes(split_folder: Path, tmp_path: Path):
    from tl_lightning.data.datamodule import ImageFolderDataModule

    model = tiny_model()
    datamodule = ImageFolderDataModule(split_folder, batch_size=6, num_workers=0)
    assert datamodule.data_config is None
    trainer = tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={})])
    trainer.fit(model, datamodule)  # no connect_data call
    assert datamodule.data_config == model.data_config and model.input_statistics is not None
    assert trainer.global_step > 0

    for name in ("cat", "dog", "fox"):  # a datamodule of other classes
        (tmp_path / "other" / name.upper()).mkdir(parents=True)
        for image in (split_folder / "train" / name).iterdir():
            (tmp_path / "other" / name.upper() / image.name).write_bytes(image.read_bytes())
    other = ImageFolderDataModule(tmp_path / "other", batch_size=6, num_workers=0, val_fraction=0.3, test_fraction=0)
    with pytest.raises(ValueError, match=r"The datamodule's classes \['CAT', 'DOG', 'FOX'\] .* are not the model's"):
        tiny_trainer(max_epochs=1).fit(tiny_model(), other)


def test_concat_pooling_feeds_the_head_the_average_and_the_maximum_of_the_last_feature_map(
    split_folder: Path, tmp_path: Path
):
    pooled, plain = tiny_model(pool=CONCAT_POOL), tiny_model()
    assert pooled.head[-1].in_features == 2 * plain.head[-1].in_features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = pooled.backbone.eval().forward_features(x)
        expected = torch.cat([feature_map.mean((2, 3)), feature_map.amax((2, 3))], dim=1)
        assert torch.allclose(pooled.backbone(x), expected, atol=1e-6)
    # Saved with the model: a checkpoint rebuilds the pooling it trained with, whatever the defaults.
    fit_with_checkpoints(pooled, split_folder, tmp_path, max_epochs=1)
    loaded = TransferClassifier.load_from_checkpoint(tmp_path / "last.ckpt")
    assert loaded.hparams.pool == CONCAT_POOL
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pooled.eval()(x))


def test_resuming_a_checkpoint_of_another_pooling_in_a_plain_lightning_fit_names_the_tensor_and_the_setting(
    split_folder: Path, tmp_path: Path
):
    fit_with_checkpoints(tiny_model(pool=CONCAT_POOL), split_folder, tmp_path, max_epochs=1)
    ckpt = tmp_path / "last.ckpt"
    expected = rf"Checkpoint '{ckpt}' holds a model of another shape than this config builds: head\.\d\.weight .*"
    expected += r"model\.pool='fastcatavgmax' there, 'avg' here"
    with pytest.raises(ValueError, match=expected):
        tiny_trainer(max_epochs=2).fit(tiny_model(pool="avg"), tiny_data(split_folder), ckpt_path=ckpt)


def test_the_pooling_is_given_once():
    with pytest.raises(ValueError, match=r"give the pooling once, as model\.pool"):
        tiny_model(pool=CONCAT_POOL, backbone_kwargs={"global_pool": "max"})


def test_a_head_with_one_dropout_rate_per_linear_layer_is_fastais_and_a_wrong_count_is_named():
    model = TransferClassifier(
        "test_resnet", num_classes=3, pretrained=False, head_hidden=[16], head_dropout=[0.25, 0.5], head_norm=True
    )
    layers = [(type(m).__name__, getattr(m, "p", None)) for m in model.head]
    assert layers == [
        ("BatchNorm1d", None),
        ("Dropout", 0.25),
        ("Linear", None),
        ("ReLU", None),
        ("BatchNorm1d", None),
        ("Dropout", 0.5),
        ("Linear", None),
    ]
    with pytest.raises(ValueError, match="head_dropout has 1 rates for a head of 2 linear layers"):
        TransferClassifier("test_resnet", num_classes=3, pretrained=False, head_hidden=[16], head_dropout=[0.5])
