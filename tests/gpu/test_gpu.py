"""The GPU tier (`pytest -m gpu`): what only a CUDA device can show. Runs wherever CUDA is present; elsewhere each
test is skipped with the reason, and the CPU tiers above cover the same code paths."""

import os
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import tiny_data, tiny_model, tiny_trainer

from tl_lightning.data.distributed import auto_num_workers
from tl_lightning.data.transforms import eval_transform
from tl_lightning.finetuning.feature_cache import FrozenFeatureCache
from tl_lightning.finetuning.unfreezing import LayerFinetuning
from tl_lightning.models.module import TransferClassifier

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")]


def step(model: TransferClassifier, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None):
    """Loss and the head's gradient of one forward/backward, under autocast to `dtype` (None: fp32)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = model.criterion(model(x), y)
    loss.backward()
    return loss.detach().float(), model.head[-1].weight.grad.detach().float().clone()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_step_matches_fp32(dtype: torch.dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = tiny_model(backbone="test_resnet").cuda().eval()
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device="cuda")
    loss32, grad32 = step(model, x, y, None)
    loss, grad = step(model, x, y, dtype)
    assert torch.allclose(loss, loss32, rtol=2e-2, atol=2e-2)
    assert torch.allclose(grad, grad32, rtol=5e-2, atol=5e-3)


def test_channels_last_and_compile_with_inductor_match_eager():
    torch.manual_seed(0)
    eager = tiny_model(backbone="test_resnet").cuda().eval()
    fast = tiny_model(backbone="test_resnet", performance={"channels_last": True, "compile": True}).cuda().eval()
    fast.load_state_dict(eager.state_dict())
    fast.configure_model()  # channels-last weights, backbone compiled in place (inductor, the default backend)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        assert torch.allclose(fast(x), eager(x), rtol=1e-3, atol=1e-3)
    assert next(p for p in fast.backbone.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)


def test_feature_cache_on_cuda_matches_training_on_images(split_folder: Path):
    heads = []
    for cached in (False, True):
        pl.seed_everything(0)
        model = tiny_model()
        schedule = LayerFinetuning(milestones={})
        callbacks = [schedule, *([FrozenFeatureCache(schedule)] if cached else [])]
        trainer = tiny_trainer(accelerator="gpu", devices=1, max_epochs=2, callbacks=callbacks)
        trainer.fit(model, tiny_data(split_folder, model, batch_size=32, train_transform=eval_transform))
        heads.append({k: v.cpu() for k, v in model.head.state_dict().items()})
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key], atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpu_ddp_on_nccl_keeps_ranks_identical_across_an_unfreeze(split_folder: Path, tmp_path: Path):
    script = Path(__file__).parents[1] / "ddp_unfreeze.py"
    env = os.environ | {"PYTHONPATH": str(script.parent)}
    done = subprocess.run(
        [sys.executable, str(script), str(split_folder), str(tmp_path), "0", "gpu"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert float(rank0.pop("largest_gradient_gap")) == 0.0 == float(rank1.pop("largest_gradient_gap"))
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []


def test_plants_recipe_forward_backward_at_its_batch_size():
    """EfficientNet-B4 at its weights' resolution (320 px), batch 64, in the precision `auto` picks."""
    torch.manual_seed(0)
    model = TransferClassifier("efficientnet_b4", num_classes=38, pretrained=False).cuda().train()
    size = model.data_config["input_size"]
    assert size == (3, 320, 320)
    x, y = torch.randn(64, *size, device="cuda"), torch.randint(0, 38, (64,), device="cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    with torch.autocast("cuda", dtype=dtype):
        loss = model.criterion(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_loaders_keep_up_with_the_gpu(tmp_path: Path):
    """Images/s the training pipeline delivers with the automatic workers, against the images/s the plants model
    trains at: prints both, and fails when the loaders would leave the GPU waiting more than half the time."""
    from conftest import write_images

    root = write_images(tmp_path / "imgs", per_class=96, size=256)
    model = TransferClassifier("efficientnet_b4", num_classes=3, pretrained=False).cuda().train()
    data = tiny_data(root, model, batch_size=64, num_workers=auto_num_workers(1), val_fraction=0.1, test_fraction=0.0)
    data.setup("fit")
    loader = data.train_dataloader()
    started, images = time.perf_counter(), 0
    for x, _ in loader:
        images += len(x)
    load_rate = images / (time.perf_counter() - started)
    x, y = torch.randn(64, *model.data_config["input_size"], device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    optimizer = torch.optim.AdamW(model.parameters())
    for i in range(8):
        if i == 3:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
            loss = model.criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.cuda.synchronize()
    train_rate = 5 * 64 / (time.perf_counter() - started)
    print(f"loaders {load_rate:.0f} img/s with {data.loader_workers} workers; model trains {train_rate:.0f} img/s")
    assert load_rate > 0.5 * train_rate


def test_the_passes_after_fit_run_on_the_gpu_in_the_trainers_precision(split_folder: Path, tmp_path: Path):
    """Lightning's teardown moves the module to the CPU when `fit` returns; calibration and the test split must
    still run on the GPU, under the trainer's autocast."""
    from tl_lightning.app.pipeline import train_and_evaluate

    model = tiny_model()
    seen: list[tuple[str, torch.dtype]] = []
    model.head.register_forward_hook(lambda module, args, out: seen.append((out.device.type, out.dtype)))
    trainer = tiny_trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1)
    trainer.callbacks.append(LayerFinetuning())
    train_and_evaluate(model, tiny_data(split_folder, model), trainer, tmp_path)
    after_fit = seen[-2:]  # the last batch of validation (temperature) and of the test split
    assert after_fit == [("cuda", torch.bfloat16)] * 2
