"""A checkpoint in timm's own format (what `timm.models.save_for_hf` writes: `config.json` and `model.safetensors`),
with a model card, so `timm.create_model("hf-hub:ORG/NAME", pretrained=True)` or `("local-dir:DIR", ...)` rebuilds
the classifier in a process that has never heard of tl_lightning.

timm's format holds one architecture with its own classifier, so the backbone is rebuilt with `num_classes` classes
and our head's linear layer becomes timm's classifier; a head with hidden layers has no place there and is refused.
The calibrated temperature is not part of a timm model: it is in `config.json` (key `tl_lightning`) and in the card.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from tl_lightning.inference.export import InferenceModel, example_input
from tl_lightning.models.backbones import build_kwargs
from tl_lightning.models.heads import as_single_linear
from tl_lightning.utils import BadValue, UserError

log = logging.getLogger(__name__)

PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def as_timm_model(model: Any) -> nn.Module:
    """The timm model `model.hparams.backbone` with `num_classes` outputs, carrying the checkpoint's backbone and
    head weights; equal to the checkpoint's logits (checked by `save_timm`)."""
    linear = as_single_linear(model.head)
    if linear is None:
        linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
        raise BadValue(
            f"--format timm needs a linear head (timm's classifier is one Linear layer), but this checkpoint's head "
            f"has {len(linears)} linear layers (model.head_hidden={list(model.hparams.get('head_hidden') or [])}). "
            "Export it with --format onnx or torchscript, or train with model.head_hidden=[]."
        )
    built = build_kwargs(model.hparams.get("backbone_kwargs"), model.hparams.get("pool"))
    kwargs = {k: v for k, v in built.items() if v is not None}
    rebuilt = timm.create_model(model.hparams.backbone, pretrained=False, num_classes=len(model.class_names), **kwargs)
    classifier = rebuilt.get_classifier()
    prefix = next(name for name, module in rebuilt.named_modules() if module is classifier)
    state = {**model.backbone.state_dict(), f"{prefix}.weight": linear.weight, f"{prefix}.bias": linear.bias}
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt.eval()


def save_timm(
    model: Any,
    out: Path,
    metrics: dict[str, Any] | None = None,
    recipe: list[str] | None = None,
    tolerance: float = 1e-4,
) -> float:
    """Write `out/` (config.json, model.safetensors, README.md) for `model`, a `TransferClassifier` on the CPU;
    returns the largest difference of the rebuilt timm model's logits from the checkpoint's, relative to their
    scale. Each file is written beside `out/` and renamed into place; other files in `out/` are left alone."""
    model = model.cpu().eval()
    rebuilt = as_timm_model(model)
    x = example_input(model, batch=3, seed=1)
    with torch.no_grad():
        expected, got = InferenceModel(model).eval()(x)[0], rebuilt(x)
    diff = float((got - expected).abs().max() / expected.abs().max().clamp(min=1))
    if diff > tolerance or not torch.equal(got.argmax(1), expected.argmax(1)):
        raise RuntimeError(f"The timm model differs from the checkpoint by {diff:.2e} (> {tolerance:.0e}).")
    preprocessing = {k: model.data_config[k] for k in PREPROCESSING_KEYS if model.data_config.get(k) is not None}
    extra = {"temperature": float(model.temperature), "weights": model.weights_info, "exported_by": "tl_lightning"}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        timm.models.save_for_hf(
            rebuilt,
            str(staging),
            model_config={"label_names": list(model.class_names), "tl_lightning": extra},
            safe_serialization=True,
            data_config=preprocessing,
        )
        (staging / "README.md").write_text(model_card(model, preprocessing, metrics or {}, recipe))
        out.mkdir(exist_ok=True)
        for file in staging.iterdir():
            file.replace(out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return diff


def model_card(model: Any, preprocessing: dict[str, Any], metrics: dict[str, Any], recipe: list[str] | None) -> str:
    """A Hugging Face model card: the Hub's metadata block, how to load it, the classes, the run's test figures and
    the recipe's choices."""
    name, classes = model.hparams.backbone, list(model.class_names)
    figures = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, int | float)}
    table = ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in figures.items())]
    table = table if figures else ["No metrics.json was found in the checkpoint's run folder."]
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, tl_lightning]",
        "pipeline_tag: image-classification",
        "---",
        f"# {name}, fine-tuned on {len(classes)} classes",
        "",
        f"Fine-tuned with tl_lightning from `{name}` ({model.weights_info.get('source', 'unknown weights')}).",
        "",
        "```python",
        "import timm",
        'model = timm.create_model("hf-hub:<this repo>", pretrained=True).eval()  # or "local-dir:<this folder>"',
        "config = timm.data.resolve_data_config({}, model=model)",
        "transform = timm.data.create_transform(**config)",
        "```",
        "",
        f"Calibrated probabilities: `softmax(logits / {float(model.temperature):.4f})` (temperature fitted on the "
        "validation split).",
        "",
        "## Classes",
        "",
        ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "",
        "## Preprocessing",
        "",
        "```json",
        json.dumps(preprocessing, indent=2),
        "```",
        "",
        "## Test figures",
        "",
        *table,
        "",
        "## Recipe",
        "",
        *(
            ["The run's config.yaml was not found."]
            if recipe is None
            else [f"- {line}" for line in recipe]
            or ["Every setting was given explicitly: no automatic choice was made."]
        ),
        "",
    ]
    return "\n".join(lines)


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub model repository `repo_id` (created if missing); returns its URL. Needs
    `pip install "tl_lightning[hub]"` and a login (`hf auth login` or `HF_TOKEN`)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover - the [hub] extra is part of [dev]
        raise UserError('--push-to-hub needs huggingface_hub: pip install "tl_lightning[hub]".') from None
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as err:  # offline, no login, no rights: say which, keep the folder
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"Could not upload {folder} to the Hub repository '{repo_id}' ({reason}). The export is complete in "
            f"{folder}: upload it later with `hf upload {repo_id} {folder}`."
        ) from None
    return f"https://huggingface.co/{repo_id}"
