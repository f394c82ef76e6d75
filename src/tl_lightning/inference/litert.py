"""Files for Android's own runtime: LiteRT `.tflite` (fp32 and int8), checked in LiteRT's interpreter.

LiteRT (formerly TensorFlow Lite) is the runtime Android ships and MediaPipe builds on; an app loads a `.tflite`
with `CompiledModel` (Kotlin/Java) or the interpreter, with its XNNPACK CPU path and GPU/NPU delegates, and iOS
through LiteRT's Swift/Objective-C library. It is the second on-device target beside ExecuTorch (`on_device`)
because it is what the Android tooling users already have expects (MediaPipe Model Maker and TFLite Model Maker
trained image classifiers to `.tflite`), and it runs on Android without PyTorch's runtime; Core ML reaches only
Apple devices and its converter does not run its models off macOS, so a Linux CI could not check its answers.
The file is written by Google's `litert-torch` converter and checked by running it in `ai-edge-litert`, the
interpreter a phone embeds, not by trusting the conversion.

As the ExecuTorch program, the file takes one image (a phone classifies one photo at a time) and returns `logits`
and temperature-scaled `probabilities` (LiteRT's signature names them `output_0` and `output_1`); the
preprocessing, class names and temperature are in `model.json` beside it. int8 is PT2E with LiteRT's own quantizer
(`inference.pt2e`); as LiteRT's int8 models do, the file then takes int8 input: the preprocessed image divided by
the input's scale plus its zero point, both in the file (the interpreter's input details) and in `model.json`.

`litert-torch` pins `typing-extensions<4.13` (through `xdsl`), which other extras' packages do not accept, so the
`[litert]` extra installs in an environment of its own and is not part of `[dev]`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tl_lightning.inference import checks, pt2e
from tl_lightning.inference.export import InferenceModel, example_input
from tl_lightning.utils import UserError, atomic_path

SUFFIX = ".tflite"


def require() -> None:
    """One sentence, not an ImportError, where the `[litert]` extra is not installed."""
    try:
        import ai_edge_litert  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        raise UserError(
            "--format litert needs LiteRT's converter and runtime: pip install 'tl_lightning[litert]', in an "
            "environment of its own (litert-torch pins typing-extensions<4.13, which the other extras do not accept)."
        ) from None


def write(model: Any, path: Path, calibration: list[Path] | None = None) -> Path:
    """`path`: the model converted to LiteRT; statically quantized to int8 where `calibration` images are given."""
    import litert_torch

    wrapper: nn.Module = InferenceModel(model.cpu().eval()).eval()
    quant_config = None
    if calibration is not None:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        wrapper = pt2e.quantized(model, wrapper, calibration, quantizer, fold_weights=False)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
    converted = litert_torch.convert(wrapper, (example_input(model, batch=1),), quant_config=quant_config)
    with atomic_path(path) as tmp:
        converted.export(str(tmp))
    return path


def input_quantization(path: Path) -> dict[str, Any]:
    """What an app must do to the preprocessed image before feeding the file: for an int8 file, the input's type,
    scale and zero point (`round(x / scale) + zero_point`); nothing for fp32."""
    details = _runner(path).get_input_details()["args_0"]
    if details["dtype"] == np.float32:
        return {}
    scale, zero_point = details["quantization"]
    return {"input_dtype": details["dtype"].__name__, "input_scale": float(scale), "input_zero_point": int(zero_point)}


def load_file(path: Path) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The `.tflite` at `path` as a function of a batch of any size, run image by image in LiteRT's interpreter."""
    runner = _runner(path)
    details = runner.get_input_details()["args_0"]
    scale, zero_point = details["quantization"]
    dtype = details["dtype"]

    def feed(row: np.ndarray) -> np.ndarray:
        if dtype == np.float32:
            return row
        info = np.iinfo(dtype)
        return np.clip(np.round(row / scale) + zero_point, info.min, info.max).astype(dtype)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [runner(args_0=feed(row[None].numpy())) for row in x]
        return tuple(torch.from_numpy(np.concatenate([r[name] for r in rows])) for name in ("output_0", "output_1"))

    return run


def _runner(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_runner()


def parity(model: Any, path: Path) -> float:
    """The file at `path` against PyTorch on random inputs (`inference.checks.parity`)."""
    return checks.parity(model, load_file(path))


def accuracy(model: Any, path: Path, test: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of the file at `path` on labelled `test` images, in LiteRT's interpreter."""
    return checks.accuracy(model, load_file(path), test)
