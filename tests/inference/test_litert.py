"""`export --format litert [--int8]`: LiteRT files for Android, loaded in LiteRT's own interpreter, answer as PyTorch
does on the run's real test images, and say what a mobile app needs beside them (for int8, the input's quantization).

LiteRT's converter pins `typing-extensions<4.13`, which `[dev]`'s packages do not accept, so its tests run in an
environment of their own: `.ci/run`'s LiteRT step installs `[offline,litert]` and runs this file there."""

import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import preloaded
import pytest
import torch
from conftest import ROOT, read_phone_export

from tl_lightning.inference import litert
from tl_lightning.inference.export import InferenceModel
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import UserError

SCRIPT = preloaded.CONSOLE_SCRIPT
needs_litert = pytest.mark.skipif(
    find_spec("litert_torch") is None or find_spec("ai_edge_litert") is None,
    reason="needs the [litert] extra, installed in its own environment by .ci/run's LiteRT step, which runs these",
)


@pytest.fixture(scope="module")
def exported(digits_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("litert")
    checkpoint = digits_run[0] / "checkpoints" / "model.ckpt"
    command = [str(SCRIPT), "export", str(checkpoint), "--format", "litert", "--int8", "--out", str(out)]
    done = preloaded.run([*command, "--calibration-images", "64"], cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def interpreter_answers(path: Path, model, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The file's logits on each file, one image per call as a phone runs it, through LiteRT's interpreter as an
    app drives it (the input quantized with the file's own scale and zero point), and PyTorch's on the same input."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (given,) = interpreter.get_input_details()
    logits = next(d for d in interpreter.get_output_details() if d["name"].endswith("output_0_output"))
    scale, zero_point = given["quantization"]
    wrapper = InferenceModel(model).eval()
    ours, reference = [], []
    for x, _ in image_batches(model, files, 32):
        for row in x.numpy():
            if given["dtype"] != np.float32:
                row = np.clip(np.round(row / scale) + zero_point, -128, 127).astype(given["dtype"])
            interpreter.set_tensor(given["index"], row[None])
            interpreter.invoke()
            ours.append(torch.from_numpy(interpreter.get_tensor(logits["index"]).copy()))
        with torch.no_grad():
            reference.append(wrapper(x)[0])
    return torch.cat(ours), torch.cat(reference), given


@needs_litert
def test_the_fp32_and_int8_files_answer_as_pytorch_does_in_litert(digits_run, exported):
    out, done = exported
    model, files, truth, record = read_phone_export(digits_run[0], out, "litert")

    fp32, reference, given = interpreter_answers(out / "model.tflite", model, files)
    assert given["dtype"] == np.float32 and list(given["shape"]) == record["input_shape"]
    assert (fp32.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.995
    assert (fp32 - reference).abs().max() <= 1e-3 * reference.abs().max()

    int8, _, given = interpreter_answers(out / "model.int8.tflite", model, files)
    # the app quantizes the image as model.json says, which is what the file declares
    assert given["dtype"] == np.int8 and record["int8"]["input_dtype"] == "int8"
    assert (record["int8"]["input_scale"], record["int8"]["input_zero_point"]) == pytest.approx(given["quantization"])
    accuracies = [float((logits.argmax(-1) == truth).float().mean()) for logits in (fp32, int8)]
    recorded = [record["fp32"]["test_accuracy"], record["int8"]["test_accuracy"]]
    assert recorded == pytest.approx(accuracies)  # what model.json says is what the interpreter gives
    assert abs(accuracies[0] - accuracies[1]) <= 0.01  # within a point of fp32 (issue 25)
    assert record["int8"]["size_bytes"] == (out / "model.int8.tflite").stat().st_size
    assert (out / "model.int8.tflite").stat().st_size < 0.4 * (out / "model.tflite").stat().st_size
    assert f"test accuracy {record['int8']['test_accuracy']:.4f}" in done.stdout
    assert "litert:" in done.stdout and "max |export - PyTorch|" in done.stdout


@pytest.mark.parametrize("missing", ["litert_torch", "ai_edge_litert"])
def test_without_litert_the_export_says_which_extra_to_install_and_where(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what Python does where the package is not installed
    with pytest.raises(UserError, match=r"pip install 'tl_lightning\[litert\]', in an environment of its own"):
        litert.require()
