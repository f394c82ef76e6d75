"""The package's shape: a short top level, layered imports, and every config target and command still resolving
after files moved. (Modules are split where a second concept grows in, not at a line count.)"""

import importlib
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import tl_lightning
from tl_lightning.app.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "tl_lightning"


def test_top_level_shows_the_architecture_in_a_few_entries():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__pycache__"))
    assert len(entries) <= 8, entries
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        module = importlib.import_module(f"tl_lightning.{package.name}")
        assert module.__doc__ and len(module.__doc__.split()) > 10, f"{package.name}/__init__.py needs its docstring"


def test_import_contracts_hold():
    """Layers (app -> evaluation | inference -> finetuning -> models -> data -> utils), Hydra only in app, and no
    import circles among the modules of a package, as `lint-imports` checks them from pyproject.toml."""
    done = subprocess.run(
        [Path(sys.executable).with_name("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 kept, 0 broken" in done.stdout


def _targets(node):
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def test_every_config_target_resolves():
    from hydra.utils import get_object

    targets = {t for f in (ROOT / "conf").rglob("*.yaml") for t in _targets(yaml.safe_load(f.read_text()) or {})}
    ours = sorted(t for t in targets if t.startswith("tl_lightning."))
    assert len(ours) >= 10
    for target in ours:
        assert callable(get_object(target)), target


def test_the_public_api_keeps_its_names():
    for name in tl_lightning.__all__:
        assert getattr(tl_lightning, name) is not None
    from tl_lightning import ImageFolderDataModule, LayerFinetuning, TransferClassifier  # noqa: F401


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "train"])
def test_python_m_tl_lightning_runs_each_command_without_an_import_hook(command: str, monkeypatch, capsys):
    """`python -m tl_lightning <command>`, as runpy runs it: the package's `__main__`, the console script's entry."""
    monkeypatch.setattr(sys, "argv", ["tl_lightning", command, "--help"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # runpy's "found in sys.modules" warning
        with pytest.raises(SystemExit) as done:
            runpy.run_module("tl_lightning", run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    assert f"python -m tl_lightning {command}" in capsys.readouterr().out
    assert not [finder for finder in sys.meta_path if type(finder).__module__.startswith("tl_lightning")]


def test_python_m_audit_in_a_fresh_process_prints_no_runpy_warning(split_folder: Path):
    done = subprocess.run(
        [sys.executable, "-m", "tl_lightning", "audit", str(split_folder)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usable images" in done.stdout
    assert "RuntimeWarning" not in done.stderr


def _documents() -> list[Path]:
    """What users read: the README, the docs, notebooks' notes, configs, benchmarks and the package's docstrings."""
    found = [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "pyproject.toml", ROOT / "notebooks" / "README.md"]
    for folder, pattern in (("docs", "*.md"), ("conf", "*.yaml"), ("benchmarks", "*.py"), ("src", "*.py")):
        found += sorted((ROOT / folder).rglob(pattern))
    return [path for path in found if path.is_file()]


def test_every_file_the_documents_cite_is_in_the_repository():
    import re

    cited = {
        (path.relative_to(ROOT), match)
        for path in _documents()
        for match in re.findall(
            r"\b((?:tests|benchmarks|notebooks|conf|docs)/[\w/.-]+\.(?:py|ipynb|yaml|md))", path.read_text()
        )
    }
    assert len(cited) > 10
    assert [(str(source), target) for source, target in sorted(cited) if not (ROOT / target).exists()] == []


def test_no_document_cites_material_outside_the_repository():
    outside = [str(path.relative_to(ROOT)) for path in _documents() if "../shared" in path.read_text()]
    assert outside == []
