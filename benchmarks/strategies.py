"""Each finetuning strategy, and training from scratch, on the digits default: test accuracy, time, parameters.

Every row is a full `train.py` run of the default config (EfficientNet-Lite0, digits, 15 epochs) with only the
strategy changed; "scratch" is the `full` strategy from random weights with the same recipe. Trainable
parameters are counted in the last epoch (head included). Rows run one after another in one process.

    python benchmarks/strategies.py [--seed 42] [--epochs 15] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _results import RESULTS, machine, save_json
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tl_lightning.app.train import run

CONF = Path(__file__).resolve().parents[1] / "conf"
ROWS = {
    "feature_extraction": ["finetuning=feature_extraction"],
    "lp_ft (default)": ["finetuning=lp_ft"],
    "top_k (k=2)": ["finetuning=top_k"],
    "full": ["finetuning=full"],
    "gradual (every 2)": ["finetuning=gradual"],
    "milestones {2: 2, 4: 4, 6: all}": ["finetuning=milestones"],
    "scratch (full, random init)": ["finetuning=full", "backbone.pretrained=false"],
}


def trainable_in_last_epoch(cfg) -> int:
    model = instantiate(cfg.model, num_classes=10, _convert_="all")
    callback = instantiate(cfg.callbacks.finetuning)
    callback.apply(model, epoch=cfg.trainer.max_epochs - 1, set_bn_modes=False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _row(r: dict) -> str:
    return f"| {r['strategy']} | {r['test_acc']:.4f} | {r['fit_seconds']:.0f} | {r['trainable_params']:,} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, overrides in ROWS.items():
            common = [
                f"seed={args.seed}",
                f"trainer.max_epochs={args.epochs}",
                "trainer.enable_progress_bar=false",
                "logger=none",
                f"paths.output_dir={tmp}/{len(results)}",
            ]
            cfg = compose("train", overrides=[*overrides, *common])
            metrics = run(cfg)
            results.append(
                {
                    "strategy": name,
                    "test_acc": round(metrics["test/acc"], 4),
                    "fit_seconds": metrics["fit_seconds"],
                    "trainable_params": trainable_in_last_epoch(cfg),
                }
            )
            print(results[-1], flush=True)

    save_json("strategies", results, args.out)
    lines = [
        f"# Finetuning strategies on digits (seed {args.seed}, {args.epochs} epochs)",
        "",
        f"`python benchmarks/strategies.py --seed {args.seed} --epochs {args.epochs}` on {machine()}.",
        "",
        "| strategy | test acc | fit time (s) | trainable params (last epoch) |",
        "|---|---|---|---|",
        *(_row(r) for r in results),
    ]
    (args.out / "strategies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
