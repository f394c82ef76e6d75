import itertools

import pytest
import timm
import torch

from tl_lightning.models.groups import build_param_groups, discriminative_lrs, layer_groups

FAMILIES = {
    "resnet18": ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"],
    "tf_efficientnet_lite0": [
        "conv_stem+bn1",
        "blocks.0.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
        "blocks.4",
        "blocks.5",
        "blocks.6.0+conv_head+bn2",
    ],
    "convnext_atto": ["stem", "stages.0.blocks", "stages.1", "stages.2", "stages.3", "head.norm"],
    "densenet121": [
        "features.conv0+norm0",
        "features.denseblock1+transition1",
        "features.denseblock2+transition2",
        "features.denseblock3+transition3",
        "features.denseblock4",
        "features.norm5",
    ],
    "mobilenetv3_small_050": [
        "conv_stem+bn1",
        "blocks.0.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
        "blocks.4",
        "blocks.5.0",
        "conv_head",
    ],
    "test_vit": ["cls_token+pos_embed+patch_embed.proj", *[f"blocks.{i}" for i in range(5)], "blocks.5+norm"],
}


@pytest.mark.parametrize("name", FAMILIES)
def test_groups_are_named_ordered_and_cover_every_parameter_once(name):
    model = timm.create_model(name, pretrained=False, num_classes=0)
    groups = layer_groups(model)
    assert [g.name for g in groups] == FAMILIES[name]
    grouped = [id(p) for g in groups for _, p in g.params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}


def test_batchnorms_belong_to_their_group():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    stem = layer_groups(model)[0]
    assert stem.batchnorms == [model.bn1]


def test_model_without_group_matcher_is_one_group_with_a_warning():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.warns(UserWarning, match="no timm `group_matcher`"):
        groups = layer_groups(model)
    assert [g.name for g in groups] == ["backbone"]
    assert len(groups[0].params) == 4 and len(groups[0].batchnorms) == 1


def test_discriminative_lrs_are_geometric_from_lr_over_mult_to_lr():
    lrs = discriminative_lrs(5, lr=1e-3, lr_mult=16)
    assert lrs[0] == pytest.approx(1e-3 / 16) and lrs[-1] == pytest.approx(1e-3)
    ratios = [b / a for a, b in itertools.pairwise(lrs)]
    assert ratios == pytest.approx([2.0] * 4)
    with pytest.raises(ValueError, match="lr_mult must be >= 1"):
        discriminative_lrs(3, lr=1e-3, lr_mult=0.5)


def test_a_flat_spread_gives_every_backbone_group_the_same_lr_and_the_optimizer_uses_it():
    from conftest import tiny_model

    assert discriminative_lrs(4, lr=1e-3, lr_mult=100, spread="flat") == pytest.approx([1e-5, 1e-5, 1e-5, 1e-3])
    model = tiny_model(lr=1e-3, lr_mult=100.0, lr_spread="flat", scheduler=None)
    lrs = {g["name"].removesuffix("/no_decay"): g["lr"] for g in model.build_optimizer().param_groups}
    assert lrs.pop("head") == pytest.approx(1e-3)
    assert len(lrs) > 2 and list(lrs.values()) == pytest.approx([1e-5] * len(lrs))
    with pytest.raises(ValueError, match=r"model\.lr_spread must be one of geometric, flat, got 'steep'."):
        tiny_model(lr_spread="steep")


def test_param_groups_are_named_and_exempt_norms_and_biases_from_weight_decay():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    groups = layer_groups(model)
    param_groups = build_param_groups(groups, [0.1 * (i + 1) for i in range(len(groups))])
    by_name = {g["name"]: g for g in param_groups}
    assert by_name["conv1+bn1"]["params"] == [model.conv1.weight]
    assert "weight_decay" not in by_name["conv1+bn1"]  # takes the optimizer's own
    assert by_name["conv1+bn1/no_decay"]["weight_decay"] == 0.0
    assert {id(p) for p in by_name["conv1+bn1/no_decay"]["params"]} == {id(model.bn1.weight), id(model.bn1.bias)}
    assert by_name["layer4/no_decay"]["lr"] == pytest.approx(0.5)
