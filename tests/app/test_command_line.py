"""`app.command_line` reads a command line as Hydra does: checked against Hydra's own (internal) parser and basic
sweeper, which src/ does not import."""

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser

from tl_lightning.app.command_line import fixed_overrides, hydra_arguments, sweep_jobs

COMMAND_LINES = [
    [],
    ["-m", "model.lr=1e-3,3e-4", "seed=1,2"],
    ["--cfg", "job", "model.lr=1e-3"],
    ["-c", "hydra", "--resolve", "-p", "model"],
    ["--config-name", "train", "-cd", "conf", "data=folder", "data.root=/x"],
    ["--info", "defaults"],
    ["-i"],
    ["--multirun", "hparams_search=seeds", "seed=4"],
    ["model.lr_factors=[0.1,1.0]", "+trainer.limit_train_batches=2", "~logger"],
    ["-h"],
    ["--hydra-help"],
    ["-sc"],
    ["-r", "--experimental-rerun", "outputs/config.pickle"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_the_flags_and_overrides_are_read_as_hydras_parser_reads_them(argv):
    ours, theirs = vars(hydra_arguments(argv)), vars(get_args_parser().parse_known_args(argv)[0])
    assert ours.pop("version") is False  # Hydra's --version prints and exits while parsing
    assert ours == theirs


def test_version_is_noticed_so_that_no_job_is_checked():
    assert hydra_arguments(["--version"]).version is True


def test_a_command_line_hydra_would_refuse_is_left_to_hydra():
    assert hydra_arguments(["--cfg"]) is None
    assert hydra_arguments(["--config-name"]) is None


SWEEPS = [
    (["model.lr=1e-3,3e-4", "seed=1,2,3"], {}),
    (["model.lr=1e-3", "data=digits,folder"], {"seed": "1,2"}),
    (["seed=7"], {"seed": "1,2,3,4,5"}),  # the command line replaces the preset's values
    (["model.lr=choice(1e-3,3e-4)", "seed=range(1,4)"], {}),
    (["model.lr_factors=[0.1,1.0]", "seed=1"], {}),
]


@pytest.mark.parametrize(("overrides", "params"), SWEEPS)
def test_a_sweep_expands_to_the_jobs_hydras_basic_sweeper_starts(overrides, params):
    words = [f"{k}={v}" for k, v in params.items()] + overrides
    [hydras] = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(words), None)
    assert sweep_jobs(overrides, params) == hydras
    keys = [word.split("=", 1)[0] for word in overrides]
    same = [key for key in keys if len({word for job in hydras for word in job if word.startswith(f"{key}=")}) == 1]
    assert [word.split("=", 1)[0] for word in fixed_overrides(overrides)] == same


def test_a_sweep_drawn_while_sweeping_is_not_expanded():
    assert sweep_jobs(["model.lr=interval(1e-4,1e-2)"]) is None


def test_a_bad_value_in_a_sweep_presets_own_params_names_its_job_before_any_job_starts(tmp_path):
    from tl_lightning.app.checks import check_jobs
    from tl_lightning.app.train import config_dir
    from tl_lightning.utils import BadValue

    argv = ["-m", "hparams_search=seeds", "hydra.sweeper.params.seed='1,-2'", f"hydra.sweep.dir={tmp_path}"]
    with pytest.raises(BadValue, match=r"^In the sweep's job seed=-2: seed=-2 must be a whole number"):
        check_jobs(config_dir(), argv)
    check_jobs(config_dir(), [*argv[:-2], "hydra.sweeper.params.seed='1,2'", f"hydra.sweep.dir={tmp_path}"])
