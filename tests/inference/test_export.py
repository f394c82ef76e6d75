"""ONNX and TorchScript exports of the digits default: parity with PyTorch, dynamic batch, embedded metadata."""

from pathlib import Path

import onnxruntime
import pytest
import torch
from conftest import tiny_model

import tl_lightning.inference.export as export_module
from tl_lightning.inference.export import InferenceModel, export, read_metadata
from tl_lightning.models.module import TransferClassifier


def test_exports_match_pytorch_and_describe_themselves(digits_run: tuple[Path, dict], tmp_path: Path):
    model = TransferClassifier.load_from_checkpoint(digits_run[0] / "checkpoints" / "model.ckpt", map_location="cpu")
    done = export(model, tmp_path)
    assert [(e.format, e.path.name) for e in done] == [("onnx", "model.onnx"), ("torchscript", "model.pt")]
    assert all(e.max_abs_diff is not None and e.max_abs_diff <= 1e-4 for e in done)

    x = torch.randn(5, 3, 64, 64)  # a batch size the export never saw
    with torch.no_grad():
        logits, probs = InferenceModel(model).eval()(x)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits, onnx_probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
    assert (torch.from_numpy(onnx_logits) - logits).abs().max() <= 1e-4 * logits.abs().max().clamp(min=1)
    assert (torch.from_numpy(onnx_probs) - probs).abs().max() <= 1e-4
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    with torch.no_grad():
        ts_logits, ts_probs = scripted(x)
    assert (ts_logits - logits).abs().max() <= 1e-4 and (ts_probs - probs).abs().max() <= 1e-4
    torch.testing.assert_close(probs, (logits / model.temperature).softmax(-1))

    for path in (tmp_path / "model.onnx", tmp_path / "model.pt"):
        meta = read_metadata(path)
        assert meta["class_names"] == [str(i) for i in range(10)]
        assert meta["preprocessing"]["input_size"] == [3, 64, 64]
        assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
        assert meta["temperature"] == pytest.approx(float(model.temperature))
        assert meta["weights"]["source"] == "package:efficientnet_lite0" and len(meta["weights"]["sha256"]) == 64


def test_an_export_that_differs_from_pytorch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = tiny_model(backbone="test_resnet")
    real = export_module.run_exported
    drifted = lambda path, x: tuple(t + 1e-3 for t in real(path, x))  # noqa: E731  a runtime that is off by 1e-3
    monkeypatch.setattr(export_module, "run_exported", drifted)
    with pytest.raises(RuntimeError, match=r"model\.pt differs from PyTorch by 1\.00e-03 .* do not ship it"):
        export(model, tmp_path, ("torchscript",))
    with pytest.raises(ValueError, match=r"Unknown export format\(s\) \['tflite'\]"):
        export(model, tmp_path, ("tflite",))
