"""Every deployable format of one checkpoint, side by side: file size, CPU latency at batch 1 (a phone classifying
one photo) and accuracy on the run's test split, each file run in its own runtime.

The checkpoint is exported once with `python -m tl_lightning export CKPT --format onnx torchscript executorch litert
--int8` (int8 calibrated on 256 of its run's training images); PyTorch eager is the reference row. Every runtime
classifies the same preprocessed test images one at a time; latency is the median of `--repeats` calls on one image
after warm-up, on this process's CPU threads (onnxruntime and PyTorch are set to them; ExecuTorch's XNNPACK
threadpool sizes itself to the machine's cores; LiteRT's interpreter is given the same threads). It needs the
`[export,mobile,litert]` extras in one environment (`[litert]` is not in `[dev]`: see inference/litert.py):

    python benchmarks/formats.py --checkpoint outputs/train/runs/<run>/checkpoints/best.ckpt [--repeats 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
from _results import machine, save_json
from executorch.runtime import Runtime

from tl_lightning.data.splits import read_split
from tl_lightning.inference.export import InferenceModel
from tl_lightning.inference.litert import input_quantization
from tl_lightning.inference.predict import image_batches
from tl_lightning.models.module import TransferClassifier


def latency_ms(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    for _ in range(5):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def runners(out: Path, model: TransferClassifier) -> dict[str, tuple[Path | None, Callable]]:
    """Batch-1 logits of each format, in the runtime that format is shipped to."""
    threads = torch.get_num_threads()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads

    def onnx(path: Path) -> Callable:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])

    def executorch(path: Path) -> Callable:
        method = Runtime.get().load_program(str(path)).load_method("forward")
        return lambda x: method.execute([x])[0]

    def tflite(path: Path) -> Callable:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
        given = input_quantization(path)  # as an app feeds an int8 file: round(x / scale) + zero point
        if not given:
            return lambda x: torch.from_numpy(runner(args_0=x.numpy())["output_0"])
        scale, zero_point = given["input_scale"], given["input_zero_point"]

        def quantized(x: torch.Tensor) -> torch.Tensor:
            q = torch.clamp(torch.round(x / scale) + zero_point, -128, 127).to(torch.int8).numpy()
            return torch.from_numpy(runner(args_0=q)["output_0"])

        return quantized

    scripted = torch.jit.load(str(out / "model.pt"), map_location="cpu")
    eager = InferenceModel(model).eval()
    return {
        "PyTorch eager (reference)": (None, lambda x: eager(x)[0]),
        "TorchScript (libtorch)": (out / "model.pt", lambda x: scripted(x)[0]),
        "ONNX fp32 (onnxruntime)": (out / "model.onnx", onnx(out / "model.onnx")),
        "ONNX int8 (onnxruntime)": (out / "model.int8.onnx", onnx(out / "model.int8.onnx")),
        "ExecuTorch fp32 (XNNPACK)": (out / "model.pte", executorch(out / "model.pte")),
        "ExecuTorch int8 (XNNPACK)": (out / "model.int8.pte", executorch(out / "model.int8.pte")),
        "LiteRT fp32 (interpreter, XNNPACK)": (out / "model.tflite", tflite(out / "model.tflite")),
        "LiteRT int8 (interpreter, XNNPACK)": (out / "model.int8.tflite", tflite(out / "model.int8.tflite")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="formats_"))
    command = [sys.executable, "-m", "tl_lightning", "export", str(args.checkpoint), "--int8", "--out", str(out)]
    subprocess.run([*command, "--format", "onnx", "torchscript", "executorch", "litert"], check=True)
    model = TransferClassifier.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    split = read_split(args.checkpoint.resolve().parent.parent / "split.csv")
    labels = {file: model.class_names.index(name) for file, name in split["test"]}
    images = []
    for batch, files in image_batches(model, list(labels), 32):
        images += [(x[None], labels[file]) for x, file in zip(batch, files, strict=True)]
    rows = {}
    with torch.no_grad():
        for name, (path, run) in runners(out, model).items():
            right = sum(int(run(x).argmax(-1)) == label for x, label in images)
            rows[name] = {
                "size_mib": path.stat().st_size / 2**20 if path else None,
                "batch1_ms": latency_ms(run, images[0][0], args.repeats),
                "test_accuracy": right / len(images),
            }
            print(name, json.dumps(rows[name]))
    result = {
        "machine": machine(),
        "model": f"{model.hparams.backbone} at {model.data_config['input_size'][-1]} px",
        "test_images": len(images),
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "executorch": _version("executorch"),
            "litert": _version("ai-edge-litert"),
        },
        "rows": rows,
    }
    print(f"written to {save_json('formats', result)}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()
