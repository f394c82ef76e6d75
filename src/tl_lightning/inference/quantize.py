"""int8 ONNX for phones and CPUs: onnxruntime's static quantization of the fp32 export, and what it costs.

Static (not dynamic) quantization because a CNN's time is in its convolutions, which only static quantization
turns into int8 kernels; it needs activation ranges, calibrated here on images of the run's own training split
(through the checkpoint's eval preprocessing, as at inference). QDQ format with per-channel weights: the format
mobile runtimes (NNAPI, XNNPACK, Core ML through onnxruntime) accelerate, and the weights' per-channel scales keep
depthwise convolutions, whose channels differ by orders of magnitude, from losing most of their precision. The
graph's input, outputs and embedded metadata are those of the fp32 file, so a consumer swaps one for the other.

Weights use 7 of their 8 bits (onnxruntime's `reduce_range`), so the file computes the same on every CPU. On x86
CPUs without VNNI (AVX2 and the older AVX-512 ones, common among cloud servers) onnxruntime multiplies uint8
activations by int8 weights with an instruction that sums pairs into 16 bits and saturates, and full-range weights
lose accuracy there; onnxruntime's documentation names 7-bit weights as the remedy. uint8 weights avoid it too, but
have no fast kernel on those CPUs, and int8 activations saturate the same way. The seventh bit costs little where
nothing saturates (docs/deploy.md, int8).

The classifier's last layer stays in float (a few kilobytes): its weights are the ones int8 per-channel scales
serve worst. A head started from the linear probe carries the probe's feature standardization folded into its
weights, and a near-constant feature gives a weight thousands of times the others; one such weight sets its row's
scale and rounds the rest of the row to zero (measured: a short digits run fell from 0.86 to chance).

The cost is measured, not assumed: both files' sizes, and their accuracy on the run's test split.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tl_lightning.inference import checks
from tl_lightning.inference.export import METADATA_KEY
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import atomic_path

log = logging.getLogger(__name__)

# How much test accuracy int8 may lose before `export --int8` warns (onnxruntime's static int8 of a CNN usually
# loses well under one point; more means a layer to keep in float, or more calibration images).
MAX_ACCURACY_DROP = 0.01


@dataclass(frozen=True)
class Variant:
    """One exported file: its size and its test accuracy (None where the run's test split is not at hand)."""

    path: str
    size_bytes: int
    test_accuracy: float | None


def batches(model: Any, files: list[Path], batch_size: int = 16) -> Iterator[tuple[np.ndarray, list[Path]]]:
    """`predict.image_batches` as the graph's float32 `image` input."""
    for x, kept in image_batches(model, files, batch_size):
        yield x.numpy().astype(np.float32), kept


# Normalisation layers stay in float: per-channel int8 of a LayerNorm's 1-D scale and shift (onnxruntime warns
# "Axis 1 is out-of-range" and quantizes them anyway) halves a ViT's accuracy; in float it keeps the fp32 model's.
# CNNs have none left after export (BatchNorm folds into the convolutions).
FLOAT_OPS = {"LayerNormalization", "InstanceNormalization"}


def quantize(model: Any, fp32: Path, out: Path, calibration: list[Path]) -> Path:
    """`out`: `fp32` quantized to int8 (QDQ, per-channel weights), calibrated on `calibration` images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.inputs = ({"image": x} for x, _ in batches(model, calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.inputs, None)

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and fusions that quantization relies on. ONNX's own shape inference: the export holds
        # standard ops only, which it covers; onnxruntime's symbolic one, meant for its fused transformer ops, finds
        # no shape for ReduceMax when its axes are an input (opset 18), as concatenated average + max pooling
        # exports it, and stops.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with atomic_path(out) as tmp:
            quantize_static(
                str(prepared),
                str(tmp),
                Reader(),
                nodes_to_exclude=[classifier_node(prepared)],
                op_types_to_quantize=sorted(set(QDQRegistry) - FLOAT_OPS),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: see the module docstring
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
            _copy_metadata(fp32, tmp)
    return out


def classifier_node(path: Path) -> str:
    """The name of the linear layer that computes the `logits` output: the first Gemm or MatMul up from it."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    producers = {output: node for node in graph.node for output in node.output}
    pending = ["logits"]
    while pending:
        node = producers.get(pending.pop())
        if node is None:
            continue
        if node.op_type in ("Gemm", "MatMul"):
            return node.name
        pending += list(node.input)
    raise ValueError(f"No linear layer computes the logits of {path}; export it again with this version.")


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(source, load_external_data=False).metadata_props}
    graph = onnx.load(target)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, props[METADATA_KEY]
    onnx.save(graph, target)


def accuracy(model: Any, path: Path, test: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of the ONNX file `path` on labelled `test` images, on onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probabilities = session.run(["logits", "probabilities"], {"image": x.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(probabilities)

    return checks.accuracy(model, run, test)


def compare(
    model: Any, fp32: Path, int8: Path, test: list[tuple[Path, int]] | None, score: Callable = accuracy
) -> dict[str, dict]:
    """Size and test accuracy of both files (`score(model, path, test)`: `accuracy` for ONNX, `on_device.accuracy`
    for ExecuTorch), for `model.json`; warns when int8 loses more than one point."""
    result = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        measured = score(model, path, test) if test else None
        result[name] = asdict(Variant(path.name, path.stat().st_size, measured))
    fp, q = result["fp32"]["test_accuracy"], result["int8"]["test_accuracy"]
    if fp is not None and fp - q > MAX_ACCURACY_DROP:
        log.warning(
            "%s: int8 loses %.1f points of test accuracy (%.4f -> %.4f): calibrate on more images "
            "(--calibration-images) or ship the fp32 file.",
            int8.name,
            100 * (fp - q),
            fp,
            q,
        )
    return result
