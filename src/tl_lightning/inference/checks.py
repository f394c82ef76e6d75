"""How an on-device file is checked in its own runtime, whatever the runtime: its answers against PyTorch's on
random inputs, and its accuracy on the run's labelled test images.

`run` is the file loaded as a function of a batch (`on_device.load_program`, `litert.load_file`) returning logits
and probabilities, so the ExecuTorch and LiteRT exports are held to the same two checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tl_lightning.inference.export import InferenceModel, example_input
from tl_lightning.inference.predict import image_batches
from tl_lightning.utils import BadValue

Run = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
BATCH = 16


def parity(model: Any, run: Run, images: int = 3) -> float:
    """The largest difference between PyTorch and `run` on random inputs, relative to the outputs' scale (at least
    1), as `inference.export.parity` measures the ONNX file."""
    x = example_input(model, batch=images, seed=1)
    exported = run(x)
    with torch.no_grad():
        expected = InferenceModel(model.cpu().eval()).eval()(x)
    return max(float((a - b).abs().max() / b.abs().max().clamp(min=1)) for a, b in zip(exported, expected, strict=True))


def accuracy(model: Any, run: Run, test: list[tuple[Path, int]]) -> float:
    """Top-1 accuracy of `run` on labelled `test` images."""
    labels = dict(test)
    right = total = 0
    for x, files in image_batches(model, [file for file, _ in test], BATCH):
        predicted = run(x)[0].argmax(-1)
        right += int((predicted == torch.tensor([labels[file] for file in files])).sum())
        total += len(files)
    if total == 0:
        raise BadValue(f"None of the {len(test)} test images could be read (e.g. '{test[0][0]}'): nothing to score.")
    return right / total
