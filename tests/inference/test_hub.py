"""The timm / Hugging Face format: `export --format timm` writes what `timm.create_model("local-dir:DIR")` loads in a
process where tl_lightning cannot be imported, and that model gives the checkpoint's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import preloaded
import torch
from conftest import ROOT, fit_with_checkpoints, tiny_model, write_images

from tl_lightning.inference.export import InferenceModel
from tl_lightning.models.module import TransferClassifier

SCRIPT = preloaded.CONSOLE_SCRIPT

# Run in a fresh interpreter with tl_lightning made unimportable: only timm, torch and the exported folder.
LOAD_WITHOUT_US = """
import sys
sys.modules["tl_lightning"] = None  # any import of it now fails
import numpy as np, timm, torch
folder, inputs, outputs = sys.argv[1:]
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # the exported folder; no hub
config = timm.data.resolve_data_config({}, model=model)
with torch.no_grad():
    logits = model(torch.from_numpy(np.load(inputs)))
np.save(outputs, logits.numpy())
print(type(model).__name__, model.num_classes, config["input_size"], model.pretrained_cfg["label_names"])
assert not [name for name in sys.modules if name.startswith("tl_lightning.")]
"""


def export(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return preloaded.run([str(SCRIPT), "export", *args], cwd=ROOT, env=env)


def test_timm_export_loads_without_tl_lightning_and_gives_the_checkpoint_logits(digits_run, tmp_path: Path):
    run, metrics = digits_run
    ckpt, out = run / "checkpoints" / "model.ckpt", tmp_path / "timm"
    done = export(str(ckpt), "--format", "timm", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = TransferClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    x = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_US, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.startswith(f"EfficientNet 10 {tuple(model.data_config['input_size'])}"), loaded.stdout
    with torch.no_grad():
        expected = InferenceModel(model)(x)[0]
    got = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max().clamp(min=1)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == model.hparams.backbone and config["label_names"] == model.class_names
    assert config["pretrained_cfg"]["mean"] == list(model.data_config["mean"])
    assert config["tl_lightning"]["temperature"] == float(model.temperature)
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and f"| test/acc | {metrics['test/acc']:.4f} |" in card
    config = (run / "config.yaml").read_text().splitlines()
    recipe = [line.removeprefix("# recipe: ") for line in config if line.startswith("# recipe: ")]
    assert recipe and all(f"- {line}" in card for line in recipe)  # the automatic choices, with their reasons


def test_a_head_with_hidden_layers_is_refused_in_one_sentence(tmp_path: Path):
    data = write_images(tmp_path / "data", per_class=4)
    fit_with_checkpoints(tiny_model(head_hidden=[8]), data, tmp_path / "ckpt", max_epochs=1)
    done = export(str(tmp_path / "ckpt" / "last.ckpt"), "--format", "timm", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: --format timm needs a linear head"), done.stderr


def test_push_to_hub_offline_says_so_in_one_line_and_keeps_the_export(digits_run, tmp_path: Path):
    out = tmp_path / "timm"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = export(
        str(digits_run[0] / "checkpoints" / "model.ckpt"),
        "--format",
        "timm",
        "--out",
        str(out),
        "--push-to-hub",
        "someone/digits-lite0",
        env=env,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "someone/digits-lite0" in errors[0] and str(out) in errors[0], done.stderr
    assert (out / "model.safetensors").is_file()
