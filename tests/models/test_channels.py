"""1-channel and multi-band input: the pretrained first convolution adapted, data loaded with the right bands."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_data, tiny_model, tiny_trainer
from PIL import Image

from tl_lightning.data.images import ImageDecodeError, load_image
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.backbones import create_backbone
from tl_lightning.models.weights import read_state_dict, resolve_weights_file

LITE0 = "package:efficientnet_lite0"


def pretrained_stem() -> torch.Tensor:
    return read_state_dict(resolve_weights_file(LITE0))["_conv_stem.weight"]


def test_one_channel_sums_the_pretrained_rgb_filters():
    backbone = create_backbone("tf_efficientnet_lite0", weights_file=LITE0, in_chans=1)
    stem = backbone.model.conv_stem.weight
    assert stem.shape[1] == 1
    assert torch.allclose(stem, pretrained_stem().sum(dim=1, keepdim=True))
    assert backbone.data_config["input_size"][0] == 1 and backbone.data_config["mean"] == (0.5,)


def test_four_bands_repeat_the_pretrained_rgb_filters_scaled():
    backbone = create_backbone("tf_efficientnet_lite0", weights_file=LITE0, in_chans=4)
    stem, rgb = backbone.model.conv_stem.weight, pretrained_stem()
    assert stem.shape[1] == 4
    assert torch.allclose(stem[:, :3], rgb * 3 / 4) and torch.allclose(stem[:, 3], rgb[:, 0] * 3 / 4)
    assert backbone.data_config["input_size"][0] == 4 and len(backbone.data_config["std"]) == 4


def write_bands(root: Path, bands: int, classes=("a", "b"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 20000, (20, 20, bands), dtype=np.uint16) + index * 30000
                if bands == 1:
                    Image.fromarray((array[..., 0] >> 8).astype(np.uint8), mode="L").save(folder / f"{i}.png")
                else:
                    np.save(folder / f"{i}.npy", array)
    return root


@pytest.mark.parametrize("bands", [1, 4])
def test_training_on_multiband_data(bands: int, tmp_path: Path):
    root = write_bands(tmp_path / f"bands{bands}", bands)
    model = tiny_model(class_names=["a", "b"], num_classes=2, backbone_kwargs={"in_chans": bands})
    data = tiny_data(root, model)
    trainer = tiny_trainer(max_epochs=1, callbacks=[LayerFinetuning(milestones={0: "all"})])
    trainer.fit(model, data)
    x, _ = next(iter(data.val_dataloader()))
    assert x.shape == (4, bands, 32, 32)
    assert trainer.global_step == 3
    if bands == 4:
        assert data.audit_report.modes == {"array:4xuint16": 16}


def test_an_image_with_other_bands_is_named(tmp_path: Path):
    path = tmp_path / "three.npy"
    np.save(path, np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match=r"three\.npy' has 3 channels but the model takes 4"):
        load_image(path, channels=4)
    assert load_image(path, channels=3).shape == (4, 4, 3)
