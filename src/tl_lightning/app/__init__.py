"""The command line: the only layer that reads Hydra configs. The training entry behind `train.py` (`train`) and
the plain-object run it drives (`pipeline`), the sweep summary, and one module per `python -m tl_lightning <cli>`
command: `predict`, `export`, `explain`, `audit`, `backbones`, `groups`.
"""
