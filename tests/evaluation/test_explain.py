"""Grad-CAM for a CNN and a ViT backbone, and the explain CLI on files and on a run's top losses."""

from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from PIL import Image

from tl_lightning.app.explain import main
from tl_lightning.models.gradcam import grad_cam, target_layer
from tl_lightning.models.module import TransferClassifier


@pytest.mark.parametrize(
    ("backbone", "layer"),
    [("test_resnet", None), ("test_efficientnet", None), ("test_vit", "blocks.5.norm1"), ("test_resnet", "layer3")],
)
def test_grad_cam_maps_have_the_image_size_and_vary(backbone: str, layer: str | None):
    torch.manual_seed(0)
    model = TransferClassifier(backbone, num_classes=3, pretrained=False)
    chosen = None if backbone == "test_vit" else layer  # the ViT's default is its last block's norm1
    module, _ = target_layer(model.backbone, chosen)
    assert module is (None if layer is None else model.backbone.get_submodule(layer))
    x = torch.randn(2, 3, 160, 160)
    cams, logits = grad_cam(model, x, layer=chosen)
    assert cams.shape == (2, 160, 160) and logits.shape == (2, 3)
    assert cams.min() >= 0 and cams.amax(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0])
    assert (cams.flatten(1).std(dim=1) > 1e-3).all()  # not constant
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_grad_cam_follows_the_chosen_class():
    torch.manual_seed(0)
    model = tiny_model(backbone="test_resnet")
    x = torch.randn(1, 3, 32, 32)
    first, _ = grad_cam(model, x, torch.tensor([0]))
    second, _ = grad_cam(model, x, torch.tensor([1]))
    assert not torch.allclose(first, second)


def test_explain_cli_writes_overlays_for_files_and_top_losses(tmp_path: Path):
    from lightning.pytorch import Trainer

    model = tiny_model(backbone="test_resnet")
    ckpt = tmp_path / "model.ckpt"
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(ckpt)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(images / f"im{i}.png")
    main([str(ckpt), str(images), "--out", str(tmp_path / "cams"), "--class", "dog"])
    assert sorted(p.name for p in (tmp_path / "cams").iterdir()) == ["000_im0_gradcam.png", "001_im1_gradcam.png"]

    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "report" / "top_losses.csv").write_text(
        f"path,true,predicted,probability,loss\n{images / 'im1.png'},fox,cat,0.5,1.2\n"
    )
    main([str(ckpt), "--top-losses", str(run), "--out", str(tmp_path / "top")])
    assert [p.name for p in (tmp_path / "top").iterdir()] == ["000_im1_gradcam.png"]
    with pytest.raises(ValueError, match="'wolf' is not one of"):
        main([str(ckpt), str(images), "--class", "wolf"])
    with pytest.raises(FileNotFoundError, match=r"top_losses\.csv"):
        main([str(ckpt), "--top-losses", str(tmp_path)])
