"""int8 for the on-device runtimes (ExecuTorch, LiteRT): PyTorch's PT2E post-training quantization, calibrated on
the run's own training images, with each runtime's own quantizer.

Both runtimes document PT2E as their int8 path (prepare the exported graph with the runtime's quantizer, run
calibration images through it, convert); what differs is only the quantizer, so the flow is written once here and
each export passes its own (`on_device`: ExecuTorch's `XNNPACKQuantizer`; `litert`: LiteRT's `PT2EQuantizer`).
Two annotations are added in front of the runtime's, for reasons measured on EfficientNet-Lite0: a convolution
followed by ReLU6 is quantized after the clamp (`annotate_conv_relu6`), and the classifier's last linear layer and
what follows it stay in float, for the reason `inference.quantize` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.inference.export import example_input
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import BadValue

CALIBRATION_BATCH = 16


def quantized(
    model: Any, wrapper: nn.Module, calibration: list[Path], quantizer: Any, fold_weights: bool = True
) -> nn.Module:
    """`wrapper` through PT2E's prepare / calibrate / convert with the runtime's `quantizer`, its ReLU6
    convolutions quantized after the clamp and its classifier kept in float. `fold_weights=False` leaves each
    weight's quantize op in the graph instead of storing int8 weights (LiteRT's converter types its tensors from
    those ops).

    Calibration runs batches of images through a graph exported with a dynamic batch; the runtime's export then
    traces the converted graph again at batch 1."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if not calibration:
        raise BadValue("No training images to calibrate int8 on: the run's split.csv lists none.")
    batch = torch.export.Dim("batch", min=1, max=CALIBRATION_BATCH)
    graph = torch.export.export(wrapper, (example_input(model),), dynamic_shapes={"x": {0: batch}}).module()
    prepared = prepare_pt2e(graph, _in_front(quantizer, set(classifier_nodes(graph))))
    seen = 0
    with torch.no_grad():
        for x, _ in image_batches(model, calibration, CALIBRATION_BATCH):
            prepared(x)
            seen += len(x)
    if seen == 0:
        raise BadValue(f"None of the {len(calibration)} calibration images could be read (e.g. '{calibration[0]}').")
    return convert_pt2e(prepared, fold_quantize=fold_weights)


def _in_front(quantizer: Any, in_float: set[str]) -> Any:
    """`quantizer`, with this module's two annotations made before its own: its patterns leave annotated nodes."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    class InFront(Quantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return quantizer.transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            annotate_conv_relu6(model, quantizer.global_config, in_float)
            for node in model.graph.nodes:
                if node.name in in_float:
                    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)  # no observers: float
            return quantizer.annotate(model)

        def validate(self, model: torch.fx.GraphModule) -> None:
            quantizer.validate(model)

    return InFront()


def annotate_conv_relu6(graph: torch.fx.GraphModule, config: Any, in_float: set[str]) -> None:
    """Quantize each convolution followed by ReLU6 (`hardtanh(0, 6)`, MobileNet's and EfficientNet-Lite's
    activation) after the ReLU6, as the runtimes' quantizers already do for ReLU, and the runtime then runs it as
    one convolution clamped to 0..6.

    Written here because the quantizers know only ReLU: they quantize the convolution's output before the clamp,
    with the scale of the pre-activation range (tens, on a BatchNorm-folded convolution), and the ReLU6 shares it;
    most of the 256 levels then fall outside 0..6, and accuracy drops (onnxruntime fuses Conv and Clip itself, so
    the int8 ONNX never had this loss)."""
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
