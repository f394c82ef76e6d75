"""`export --format executorch [--int8]`: ExecuTorch programs for phones, loaded in ExecuTorch's own runtime, answer
as PyTorch does on the run's real test images, and say what a mobile app needs beside them."""

import subprocess
import sys
from pathlib import Path

import preloaded
import pytest
import torch
from conftest import ROOT, read_phone_export
from executorch.runtime import Runtime

from tl_lightning.inference import on_device
from tl_lightning.inference.export import InferenceModel
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import UserError

SCRIPT = preloaded.CONSOLE_SCRIPT


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("phone")
    checkpoint = digits_run[0] / "checkpoints" / "model.ckpt"
    command = [str(SCRIPT), "export", str(checkpoint), "--format", "executorch", "--int8", "--out", str(out)]
    done = preloaded.run([*command, "--calibration-images", "64"], cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def runtime_answers(path: Path, model, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """The program's logits on each file, one image per call as a phone runs it, and PyTorch's on the same input."""
    method = Runtime.get().load_program(str(path)).load_method("forward")
    wrapper = InferenceModel(model).eval()
    ours, reference, kept = [], [], []
    for x, batch_files in image_batches(model, files, 32):
        ours += [method.execute([row[None].contiguous()])[0] for row in x]
        with torch.no_grad():
            reference.append(wrapper(x)[0])
        kept += batch_files
    return torch.cat(ours), torch.cat(reference), kept


@pytest.mark.slow
def test_the_fp32_and_int8_programs_answer_as_pytorch_does_in_executorchs_runtime(digits_run, exported):
    out, done = exported
    model, files, truth, record = read_phone_export(digits_run[0], out, "executorch")

    fp32, reference, kept = runtime_answers(out / "model.pte", model, files)
    assert kept == files
    assert (fp32.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.995
    assert (fp32 - reference).abs().max() <= 1e-3 * reference.abs().max()
    int8, _, _ = runtime_answers(out / "model.int8.pte", model, files)
    assert not torch.equal(int8, fp32)  # it is another program, not a copy

    accuracies = [float((logits.argmax(-1) == truth).float().mean()) for logits in (fp32, int8)]
    recorded = [record["fp32"]["test_accuracy"], record["int8"]["test_accuracy"]]
    assert recorded == pytest.approx(accuracies)  # what model.json says is what the runtime gives
    assert abs(accuracies[0] - accuracies[1]) <= 0.01  # within a point of fp32 (issue 25)
    assert record["int8"]["size_bytes"] == (out / "model.int8.pte").stat().st_size
    assert (out / "model.int8.pte").stat().st_size < 0.4 * (out / "model.pte").stat().st_size
    assert f"test accuracy {record['int8']['test_accuracy']:.4f}" in done.stdout
    assert "executorch:" in done.stdout and "max |export - PyTorch|" in done.stdout


def test_without_executorch_the_export_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # what Python does where the package is not installed
    with pytest.raises(UserError, match=r"pip install 'tl_lightning\[mobile\]'"):
        on_device.require()
