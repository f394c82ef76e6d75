"""Self-describing ONNX and TorchScript exports of a checkpoint, checked against PyTorch.

The exported graph takes a preprocessed batch `(N, C, H, W)` (any N) and returns `logits` and temperature-scaled
`probabilities`. What a consumer needs to prepare that batch, and to read the output, travels inside the file:
the preprocessing (size, mean, std, interpolation, crop), the class names, the temperature and the weights'
provenance, as ONNX `metadata_props` (key `tl_lightning`, JSON) and as the TorchScript extra file
`tl_lightning.json`. Each export is run against the PyTorch model on the same batch and the largest absolute
difference is reported; one above `tolerance` is an error.

PyTorch deprecates TorchScript in favour of `torch.export`; it is still what C++ (libtorch) and older mobile
runtimes load, so it is kept as a format, and its deprecation warnings are silenced here rather than shown on
every export. The command line is `python -m tl_lightning export`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_lightning.models.heads import scaled_softmax
from tl_lightning.utils import BadValue, atomic_path, write_json

log = logging.getLogger(__name__)

METADATA_KEY = "tl_lightning"
FORMATS = ("onnx", "torchscript")


class InferenceModel(nn.Module):
    """Backbone, head and temperature only: no Lightning, trainer or metrics in the exported graph."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.register_buffer("temperature", model.temperature.detach().clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.backbone(x))
        return logits, scaled_softmax(logits, self.temperature)


def metadata(model: Any) -> dict[str, Any]:
    """Everything a consumer of the export needs besides the graph."""
    config = model.data_config
    return {
        "backbone": model.hparams.backbone,
        "class_names": model.class_names,
        "preprocessing": {
            "input_size": list(config["input_size"]),
            "mean": list(config["mean"]),
            "std": list(config["std"]),
            "interpolation": config.get("interpolation"),
            "crop_pct": config.get("crop_pct"),
            "crop_mode": config.get("crop_mode") or "center",
            "pixel_range": "RGB (or the channels given) scaled to 0..1, then (x - mean) / std",
        },
        "temperature": float(model.temperature),
        "weights": model.weights_info,
        "outputs": {"logits": "raw class scores", "probabilities": "softmax(logits / temperature)"},
    }


@dataclass(frozen=True)
class Exported:
    path: Path
    format: str
    max_abs_diff: float | None  # None: no runtime to check with


def example_input(model: Any, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = tuple(int(v) for v in model.data_config["input_size"])
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(seed))


def export_onnx(model: Any, path: Path) -> Path:
    """ONNX through the `torch.export`-based exporter, with a dynamic batch axis and the metadata embedded."""
    import onnx

    wrapper = InferenceModel(model).eval()
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        wrapper,
        (example_input(model),),
        path,
        input_names=["image"],
        output_names=["logits", "probabilities"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        external_data=False,  # one self-contained file (models past 2 GB would need external data)
        verbose=False,
    )
    graph = onnx.load(path)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(model))
    onnx.checker.check_model(graph)
    onnx.save(graph, path)
    return path


def export_torchscript(model: Any, path: Path) -> Path:
    """A traced TorchScript module, with the metadata as the extra file `tl_lightning.json`."""
    wrapper = InferenceModel(model).eval()
    with torch.no_grad(), _quiet_torchscript():
        traced = torch.jit.trace(wrapper, example_input(model))
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata(model))})
    return path


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported `.onnx` or TorchScript `.pt` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    extra = {f"{METADATA_KEY}.json": ""}
    with _quiet_torchscript():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[f"{METADATA_KEY}.json"])


def run_exported(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Logits and probabilities from the exported file on `x`; None for ONNX when onnxruntime is missing."""
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits, probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(probs)
    with _quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(x)


def parity(model: Any, path: Path, batch: int = 3) -> float | None:
    """The largest difference between PyTorch and the export on a batch of another size than traced, relative to
    the outputs' scale (at least 1): float32 rounding grows with the logits' size, and a probe-started head's
    logits on noise inputs reach tens."""
    x = example_input(model, batch=batch, seed=1)
    exported = run_exported(path, x)
    if exported is None:
        return None
    with torch.no_grad():
        expected = InferenceModel(model).eval()(x)
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1)) for a, b in zip(exported, expected, strict=True))


def export(model: Any, out: Path, formats: tuple[str, ...] = FORMATS, tolerance: float = 1e-4) -> list[Exported]:
    """Export `model` (a `TransferClassifier`, in eval mode on CPU) to `out/model.{onnx,pt}` and check each file.

    Raises:
        ValueError: an unknown format.
        RuntimeError: an export that differs from PyTorch by more than `tolerance`.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise BadValue(f"Unknown export format(s) {unknown}; choose from {list(FORMATS)}.")
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    done = []
    for name in formats:
        path = out / ("model.onnx" if name == "onnx" else "model.pt")
        with atomic_path(path) as tmp:
            (export_onnx if name == "onnx" else export_torchscript)(model, tmp)
        diff = parity(model, path)
        if diff is not None and diff > tolerance:
            raise RuntimeError(f"{path} differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); do not ship it.")
        done.append(Exported(path, name, diff))
    write_json(out / "model.json", metadata(model))
    return done
