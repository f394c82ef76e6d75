from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch

from tl_lightning.models.backbones import create_backbone
from tl_lightning.models.weights import load_pretrained, read_state_dict, resolve_weights_file, sha256_of

LITE0 = "package:efficientnet_lite0"


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5O'.*resnet50"):
        create_backbone("resnet5O", pretrained=False)


def test_missing_weights_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_backbone("test_resnet", weights_file=str(missing))


def test_unknown_packaged_weights_lists_known_ones():
    with pytest.raises(ValueError, match="Known: efficientnet_lite0"):
        resolve_weights_file("package:efficientnet_lite9")


def test_random_init_is_headless_and_recorded():
    backbone = create_backbone("test_resnet", pretrained=False)
    assert backbone.weights == {"source": "random-init"}
    assert backbone.model(torch.zeros(2, 3, 32, 32)).shape == (2, backbone.num_features)


def test_packaged_lite0_weights_load_with_their_own_preprocessing_and_provenance():
    backbone = create_backbone("tf_efficientnet_lite0", weights_file=LITE0)
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)
    assert backbone.data_config["std"] == (0.5, 0.5, 0.5)
    assert backbone.weights["matched_by"] == "order"
    path = resolve_weights_file(LITE0)
    assert backbone.weights["sha256"] == sha256_of(path)
    shipped = read_state_dict(path)
    assert torch.equal(backbone.model.conv_stem.weight, shipped["_conv_stem.weight"])


def test_packaged_lite0_weights_are_real_imagenet_weights():
    """Mapped by order, the shipped tensors must classify a real photo correctly, not merely load."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_pretrained(model, read_state_dict(resolve_weights_file(LITE0)), origin="test")
    image = torch.from_numpy(np.asarray(skimage.data.coffee(), dtype=np.float32) / 255.0).permute(2, 0, 1)
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = model((image - 0.5) / 0.5).softmax(-1)[0]
    assert probs.argmax().item() == 967  # ImageNet "espresso"
    assert probs[967] > 0.5


def test_weights_that_do_not_fit_say_which_tensor(tmp_path: Path):
    lite0 = read_state_dict(resolve_weights_file(LITE0))
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="do not fit this backbone"):
        load_pretrained(model, lite0, origin="lite0")


def test_local_weights_file_loads_by_name(tmp_path: Path):
    source = timm.create_model("test_resnet", pretrained=False)  # with classifier, like a hub file
    path = tmp_path / "resnet.pth"
    torch.save(source.state_dict(), path)
    backbone = create_backbone("test_resnet", weights_file=str(path))
    assert backbone.weights["matched_by"] == "name"
    target = backbone.model.state_dict()
    assert all(torch.equal(target[k], v) for k, v in source.state_dict().items() if k in target)
    assert len(target) == len(source.state_dict()) - 2  # all but the classifier's weight and bias


@pytest.mark.parametrize(
    "name", ["mobilenetv3_small_050", "tf_efficientnet_lite0", "resnet18", "convnext_atto", "densenet121", "test_vit"]
)
def test_num_features_is_the_width_the_headless_model_outputs(name: str):
    backbone = create_backbone(name, pretrained=False)
    size = backbone.data_config["input_size"][1:]
    with torch.no_grad():
        out = backbone.model.eval()(torch.zeros(1, 3, *size))
    assert out.shape == (1, backbone.num_features)  # MobileNetV3: 1024 pre-logits, not num_features=288
