"""Train and evaluate a transfer-learning image classifier: `python train.py [overrides]`.

Examples:
    python train.py                                         # digits + EfficientNet-Lite0, CPU
    python train.py backbone=efficientnet_b4 data=plants data.root=/data/plantvillage trainer=gpu
    python train.py -m model.lr=1e-3,3e-4                   # a sweep, one run folder per job
    python train.py task=lr_find                            # LR range test; prints the model.lr to use
    python train.py task=probe                              # linear probe of the frozen features
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from tl_lightning.app import train  # after the checks: a mistake is answered before Lightning loads

    return train.main(cfg)


if __name__ == "__main__":
    from tl_lightning.app.checks import check_command_line

    check_command_line(Path(__file__).parent / "conf", sys.argv[1:])  # --cfg job and sweeps fail fast too
    main()
