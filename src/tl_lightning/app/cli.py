"""`tl-lightning <command> [args]`: one entry for every job (the `[project.scripts]` console script).

`train` takes exactly what `python train.py` takes (Hydra overrides, `-m`, `--cfg job`, `task=lr_find|probe`);
the others are the `python -m tl_lightning <command>` tools, with their own `--help`.
"""

from __future__ import annotations

import importlib
import sys

from tl_lightning.app._common import user_errors

# One line each, for `tl-lightning --help`. Every name but `train` is also `python -m tl_lightning <name>`.
COMMANDS = {
    "train": "train, test and report; Hydra overrides as for `python train.py` (task=lr_find | probe too)",
    "predict": "predicted classes of image files or folders, into a CSV",
    "serve": "an HTTP endpoint (LitServe): POST an image, get the top-k classes",
    "export": "ONNX and TorchScript files with their metadata, checked against PyTorch",
    "explain": "Grad-CAM overlays for images, or for a run's highest-loss test images",
    "optimize": "an image folder, audited and split, into LitData chunks for data=streaming",
    "audit": "check an image folder before training: bad files, ignored entries, imbalance, leaks",
    "backbones": "list the backbone names timm knows",
    "groups": "print a backbone's layer groups, the unit of freezing and of learning rate",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {line}" for name, line in COMMANDS.items())
    return f"usage: tl-lightning <command> [args]\n\ncommands:\n{rows}\n\n`tl-lightning <command> --help` for each."


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(f"Unknown command '{name}'.\n\n{usage()}")
    with user_errors():
        if name == "train":
            from tl_lightning.app.train import run_hydra

            run_hydra(rest)
        else:
            importlib.import_module(f"tl_lightning.app.{name}").main(rest)


if __name__ == "__main__":
    main()
