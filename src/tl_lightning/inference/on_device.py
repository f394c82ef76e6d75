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

int8 is the PT2E flow ExecuTorch documents for XNNPACK (`inference.pt2e`): `XNNPACKQuantizer` with symmetric
per-channel int8 weights and int8 activations, calibrated on images of the run's own training split through the
checkpoint's eval preprocessing (as `export --int8` does for ONNX), the classifier's last linear layer in float.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.inference import checks, pt2e
from tl_lightning.inference.export import InferenceModel, example_input
from tl_lightning.utils import UserError, atomic_path

SUFFIX = ".pte"


def require() -> None:
    """One sentence, not an ImportError, where the `[mobile]` extra is not installed."""
    try:
        import executorch  # noqa: F401
    except ImportError:
        raise UserError("--format executorch needs ExecuTorch: pip install 'tl_lightning[mobile]'.") from None


def write(model: Any, path: Path, calibration: list[Path] | None = None) -> Path:
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
    """`wrapper` quantized by PT2E with ExecuTorch's XNNPACK quantizer (`inference.pt2e`)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    return pt2e.quantized(model, wrapper, calibration, quantizer)


def load_program(path: Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The `.pte` at `path` as a function of a batch of any size, run image by image in ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [method.execute([row[None].contiguous()]) for row in x]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    return run


def input_quantization(path: Path) -> dict[str, Any]:
    """Nothing: an int8 program takes the float image and quantizes it itself."""
    return {}


def parity(model: Any, path: Path) -> float:
    """The program at `path` against PyTorch on random inputs (`inference.checks.parity`)."""
    return checks.parity(model, load_program(path))


def accuracy(model: Any, path: Path, test: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of the program at `path` on labelled `test` images, in ExecuTorch's runtime."""
    return checks.accuracy(model, load_program(path), test)


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings about its own internals (deprecations, `register_constant`) are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield
