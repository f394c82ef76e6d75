"""`python -m tl_lightning groups BACKBONE`: a backbone's layer groups (the unit of freezing and of learning rate),
with parameter and BatchNorm counts."""

from __future__ import annotations

import argparse

from tl_lightning.app._common import run_cli
from tl_lightning.models.backbones import create_backbone
from tl_lightning.models.groups import layer_groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning groups", description="Print layer groups.")
    parser.add_argument("backbone", help="timm model name")
    args = parser.parse_args(argv)
    backbone = create_backbone(args.backbone, pretrained=False)
    groups = layer_groups(backbone.model)
    width = max(len(g.name) for g in groups)
    print(f"{'#':>3}  {'group':<{width}}  {'params':>12}  batchnorms")
    for i, g in enumerate(groups):
        print(f"{i:>3}  {g.name:<{width}}  {g.num_params:>12,}  {len(g.batchnorms)}")


if __name__ == "__main__":
    run_cli(main)
