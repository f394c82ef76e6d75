"""Hydra's command line read the way Hydra reads it, so that every job it would start can be checked before Hydra
starts one (`checks.check_jobs`).

Written here rather than imported: Hydra's own argument parser and its basic sweeper's expansion are internal
modules, not its public API. The flags mirror Hydra 1.3's (`python train.py --help`); the
expansion is the basic sweeper's documented rule: the product of every swept key's values, the sweeper's
`params` first and the command line overriding them key by key.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser

_SWITCHES = (
    ("--help", "-h"),
    ("--hydra-help",),
    ("--version",),
    ("--resolve",),
    ("--run", "-r"),
    ("--multirun", "-m"),
    ("--shell-completion", "-sc"),
)
_VALUES = (
    ("--cfg", "-c"),
    ("--package", "-p"),
    ("--config-path", "-cp"),
    ("--config-name", "-cn"),
    ("--config-dir", "-cd"),
    ("--experimental-rerun",),
)


class _Refused(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # Hydra's parser prints the usage and exits; ours leaves that to Hydra
        raise _Refused(message)


def hydra_arguments(argv: list[str]) -> argparse.Namespace | None:
    """`argv` parsed with Hydra's flags (`overrides` holds the `key=value` words); None where Hydra's parser
    would refuse it, which Hydra then reports itself.

    >>> args = hydra_arguments(["-m", "model.lr=1e-3,3e-4", "--config-name", "train"])
    >>> args.multirun, args.config_name, args.overrides
    (True, 'train', ['model.lr=1e-3,3e-4'])
    >>> hydra_arguments(["--cfg"]) is None
    True
    """
    parser = _Parser(add_help=False)
    parser.add_argument("overrides", nargs="*")
    for flags in _SWITCHES:
        parser.add_argument(*flags, action="store_true")
    for flags in _VALUES:
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    try:
        return parser.parse_known_args(argv)[0]
    except _Refused:
        return None


def sweep_jobs(overrides: list[str], params: Mapping[str, str] | None = None) -> list[list[str]] | None:
    """The overrides of each job Hydra's basic sweeper starts for `overrides` and its config's
    `hydra.sweeper.params`; None where a sweep is not a list of values (a range for Optuna): those are drawn
    while sweeping.

    >>> sweep_jobs(["model.lr=1e-3,3e-4", "seed=1"], params={"seed": "1,2"})
    [['seed=1', 'model.lr=0.001'], ['seed=1', 'model.lr=0.0003']]
    """
    words = [f"{key}={value}" for key, value in (params or {}).items()] + list(overrides)
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(words):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            return None
    return [list(job) for job in itertools.product(*choices.values())]


def fixed_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are the same in every job of a sweep.

    >>> fixed_overrides(["model.lr=1e-3,3e-4", "seed=1"])
    ['seed=1']
    """
    return [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
