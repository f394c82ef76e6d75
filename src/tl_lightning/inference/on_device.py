"""Programs for phones: ExecuTorch `.pte` files (fp32 and int8) on the XNNPACK delegate, checked in ExecuTorch's
own runtime.

ExecuTorch is PyTorch's on-device runtime (the successor of PyTorch Mobile's lite interpreter): the same
`torch.export` graph as the ONNX export, lowered ahead of time, loaded by its Android (Java/Kotlin) and iOS
(Swift/Objective-C) libraries. XNNPACK is its CPU delegate on every phone. The file is checked by running it in
ExecuTorch's Python runtime, which is the runtime a phone embeds, not by trusting the lowering.

The program takes a batch of one image: a phone classifies one photo at a time, and a static shape lets XNNPACK
plan its memory once (a program lowered with a dynamic batch bounded at 64 refused a batch of 16 at run time,
"Attempted to resize a bounded tensor"). The graph's outputs are the ONNX export's: `logits` and temperature-scaled
`probabilities`. A `.pte` carries no metadata a mobile app can read; the preprocessing, class names and
temperature are in `model.json` beside it (`inference.export.metadata`), with the input shape.

int8 is the PT2E flow ExecuTorch documents for XNNPACK: `XNNPACKQuantizer` with symmetric per-channel int8 weights
and int8 activations, calibrated on images of the run's own training split through the checkpoint's eval
preprocessing (as `export --int8` does for ONNX). The classifier's last linear layer stays in float, for the reason
`inference.quantize` gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.inference.export import InferenceModel, example_input
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import BadValue, UserError, atomic_path

CALIBRATION_BATCH = 16


def require_executorch() -> None:
    """One sentence, not an ImportError, where the `[mobile]` extra is not installed."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise UserError("--format executorch needs ExecuTorch: pip install 'tl_lightning[mobile]'.") from None


def input_shape(model: Any) -> list[int]:
    """The program's one input: a batch of one preprocessed image."""
    return [1, *(int(v) for v in model.data_config["input_size"])]


def export_executorch(model: Any, path: Path, calibration: list[Path] | None = None) -> Path:
    """`path`: the model lowered to XNNPACK; statically quantized to int8 where `calibration` images are given."""
    wrapper: nn.Module = InferenceModel(model.cpu().eval()).eval()
    x = example_input(model, batch=1)
    with _quiet():
        if calibration is not None:
            wrapper = quantized(model, wrapper, calibration)
        program = lower(torch.export.export(wrapper, (x,)))
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return path


def lower(exported: torch.export.ExportedProgram) -> Any:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()


def quantized(model: Any, wrapper: nn.Module, calibration: list[Path]) -> nn.Module:
    """`wrapper` through PT2E's prepare / calibrate / convert for XNNPACK, its classifier kept in float.

    Calibration runs batches of images through a graph exported with a dynamic batch; the converted graph is
    exported again at batch 1 by the caller."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise BadValue("No training images to calibrate int8 on: the run's split.csv lists none.")
    batch = torch.export.Dim("batch", min=1, max=CALIBRATION_BATCH)
    graph = torch.export.export(wrapper, (example_input(model),), dynamic_shapes={"x": {0: batch}}).module()
    in_float = set(classifier_nodes(graph))

    class Quantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            annotate_conv_relu6(model, self.global_config, in_float)  # first: the patterns below then leave these
            return super().annotate(model)

    quantizer = Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(lambda node: node.name not in in_float)
    prepared = prepare_pt2e(graph, quantizer)
    seen = 0
    with torch.no_grad():
        for x, _ in image_batches(model, calibration, CALIBRATION_BATCH):
            prepared(x)
            seen += len(x)
    if seen == 0:
        raise BadValue(f"None of the {len(calibration)} calibration images could be read (e.g. '{calibration[0]}').")
    return convert_pt2e(prepared)


def annotate_conv_relu6(graph: torch.fx.GraphModule, config: Any, in_float: set[str]) -> None:
    """Quantize each convolution followed by ReLU6 (`hardtanh(0, 6)`, MobileNet's and EfficientNet-Lite's
    activation) after the ReLU6, as the XNNPACK quantizer already does for ReLU, and XNNPACK then runs as one
    convolution clamped to 0..6.

    Written here because the quantizer knows only ReLU: it quantizes the convolution's output before the clamp,
    with the scale of the pre-activation range (tens, on a BatchNorm-folded convolution), and the ReLU6 shares it;
    most of the 256 levels then fall outside 0..6. Measured on a short digits run of EfficientNet-Lite0 (400 test
    images): 0.915 in fp32, 0.768 quantized that way, 0.918 quantized after the ReLU6 (onnxruntime fuses Conv and
    Clip itself, so the int8 ONNX never had this loss)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY
    from torchao.quantization.pt2e.quantizer.utils import (
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )

    relu6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    for node in graph.graph.nodes:
        conv = node.args[0] if node.op == "call_function" and node.target in relu6 else None
        if conv is None or getattr(conv, "target", None) != torch.ops.aten.conv2d.default or len(conv.users) > 1:
            continue
        if tuple(node.args[1:3]) != (0.0, 6.0) or {node.name, conv.name} & in_float:
            continue
        inputs = {conv.args[0]: get_input_act_qspec(config), conv.args[1]: get_weight_qspec(config)}
        if len(conv.args) > 2 and isinstance(conv.args[2], torch.fx.Node):
            inputs[conv.args[2]] = get_bias_qspec(config)
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config), _annotated=True)


def classifier_nodes(graph: torch.fx.GraphModule) -> list[str]:
    """The nodes from the last linear layer on: the classifier and what scales its logits, kept in float."""
    nodes = list(graph.graph.nodes)
    linears = [i for i, node in enumerate(nodes) if node.target == torch.ops.aten.linear.default]
    if not linears:
        raise ValueError("The model has no linear classifier to keep in float.")
    return [node.name for node in nodes[linears[-1] :]]


def load_program(path: Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The `.pte` at `path` as a function of a batch of any size, run image by image in ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [method.execute([row[None].contiguous()]) for row in x]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    return run


def parity(model: Any, path: Path, images: int = 3) -> float:
    """The largest difference between PyTorch and the program on random inputs, relative to the outputs' scale
    (at least 1), as `inference.export.parity` measures the ONNX file."""
    x = example_input(model, batch=images, seed=1)
    exported = load_program(path)(x)
    with torch.no_grad():
        expected = InferenceModel(model.cpu().eval()).eval()(x)
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1)) for a, b in zip(exported, expected, strict=True))


def accuracy(model: Any, path: Path, test: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of the program at `path` on labelled `test` images, in ExecuTorch's runtime."""
    run = load_program(path)
    labels = dict(test)
    right = total = 0
    for x, files in image_batches(model, [file for file, _ in test], CALIBRATION_BATCH):
        predicted = run(x)[0].argmax(-1)
        right += int((predicted == torch.tensor([labels[file] for file in files])).sum())
        total += len(files)
    if total == 0:
        raise BadValue(f"None of the {len(test)} test images could be read (e.g. '{test[0][0]}'): nothing to score.")
    return right / total


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings about its own internals (deprecations, `register_constant`) are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield
