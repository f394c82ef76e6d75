"""The built package works outside this checkout: the wheel holds every module and every config, and its
console script runs from an empty folder, with a user's own config folder beside ours. (`.ci/run` also installs
the wheel with its dependencies into a fresh virtual environment and trains there.)"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, ROOT]
    subprocess.run(command, check=True, capture_output=True, cwd=out)
    return next(out.glob("tl_lightning-*.whl"))


def test_the_wheel_holds_every_module_the_page_and_every_config(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"{p.relative_to(ROOT / 'src').as_posix()}" for p in (ROOT / "src").rglob("*.py")}
    modules.add("tl_lightning/inference/page.html")  # serve --ui
    configs = {f"tl_lightning/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert len(configs) > 40
    assert modules - names == set() and configs - names == set()


@pytest.mark.slow
def test_the_installed_console_script_runs_from_an_empty_folder_with_a_users_configs(wheel: Path, tmp_path: Path):
    target, empty, mine = tmp_path / "site", tmp_path / "empty", tmp_path / "my_conf" / "data"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, wheel]
    subprocess.run(install, check=True, capture_output=True)
    empty.mkdir()
    mine.mkdir(parents=True)
    (mine / "small_digits.yaml").write_text(
        "# @package _global_\ndefaults:\n  - digits\n  - _self_\ndata:\n  batch_size: 17\n"
    )
    env = os.environ | {"PYTHONPATH": str(target)}  # ahead of this checkout's editable install
    env.pop("TL_LIGHTNING_CONF", None)

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=empty, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = run(
        sys.executable,
        "-c",
        "import tl_lightning, importlib.resources as r; "
        "print(tl_lightning.__file__); print(r.files('tl_lightning.conf'))",
    )
    assert all(line.startswith(str(target)) for line in where.split())
    script = str(target / "bin" / "tl-lightning")
    job = run(sys.executable, script, "train", "--cfg", "job")
    assert "DigitsDataModule" in job and "efficientnet_lite0" in job
    mine_job = run(
        sys.executable, script, "train", "--config-dir", str(mine.parent), "data=small_digits", "--cfg", "job"
    )
    assert "batch_size: 17" in mine_job and "DigitsDataModule" in mine_job
    assert list(empty.iterdir()) == []  # --cfg job writes nothing


def test_the_package_says_its_version_and_the_changelog_has_it(wheel: Path):
    import tomllib

    import tl_lightning

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tl_lightning.__version__ == declared and f"-{declared}-" in wheel.name
    assert f"## {declared}" in (ROOT / "CHANGELOG.md").read_text()


def test_ci_pins_every_core_dependency_at_the_floor_pyproject_declares(tmp_path: Path):
    import tomllib

    from packaging.requirements import Requirement

    declared = [
        Requirement(line) for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    printed = subprocess.run([sys.executable, ROOT / ".ci" / "floors.py"], capture_output=True, text=True, check=True)
    pins = dict(line.split("==") for line in printed.stdout.split())
    for requirement in declared:
        floor = next(spec.version for spec in requirement.specifier if spec.operator == ">=")
        assert pins[requirement.name] == floor and requirement.specifier.contains(floor), requirement
    assert "floors.py" in (ROOT / ".ci" / "run").read_text()  # and CI installs and tests them
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "floors.py").write_text((ROOT / ".ci" / "floors.py").read_text())
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["torch", "timm>=1.0"]\n')
    unpinned = subprocess.run([sys.executable, tmp_path / ".ci" / "floors.py"], capture_output=True, text=True)
    assert unpinned.returncode != 0 and "'torch' declares no >= floor" in unpinned.stderr
