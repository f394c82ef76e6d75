"""`python -m tl_lightning backbones --list [PATTERN] [--pretrained]`: the backbone names timm knows."""

from __future__ import annotations

import argparse

import timm

from tl_lightning.app._common import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tl_lightning backbones", description="List timm backbones.")
    parser.add_argument("--list", nargs="?", const="*", metavar="PATTERN", help="list timm models (glob)")
    parser.add_argument("--pretrained", action="store_true", help="only models with pretrained weights")
    args = parser.parse_args(argv)
    if args.list is None:
        parser.print_help()
        return
    for model_name in timm.list_models(args.list, pretrained=args.pretrained):
        print(model_name)


if __name__ == "__main__":
    run_cli(main)
