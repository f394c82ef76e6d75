"""The README's library example runs as written, and the guide in docs/ says what the code does."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _python_block(path: Path, after: str) -> str:
    section = path.read_text().split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_lightning_example_runs(tmp_path, monkeypatch):
    code = _python_block(README, "## Use it in your own Lightning project")
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and checkpoints land here
    monkeypatch.setenv("HOME", str(tmp_path))  # DigitsDataModule's default cache lives under ~
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["restored"].class_names == [str(i) for i in range(10)]
    assert len(namespace["probabilities"]) == 32  # batches of the 1,000 test digits


def test_ci_runs_the_readmes_test_command_then_the_slow_tests():
    section = README.read_text().split("Set up and run the tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S).group(1)
    steps = command.removeprefix("python3 -m venv .venv && . .venv/bin/activate && ")
    assert steps.endswith('pytest -m "not slow"')
    ci = (ROOT / ".ci" / "run").read_text().replace("pip install --quiet ", "pip install ").splitlines()
    assert steps in ci and ci.index("pytest -m slow") > ci.index(steps)
    assert command in (ROOT / "docs" / "index.md").read_text()


def test_the_guides_library_example_is_the_one_the_readme_runs():
    guide = _python_block(ROOT / "docs" / "library.md", "# Use it in your own Lightning project")
    assert guide == _python_block(README, "## Use it in your own Lightning project")


def test_the_probe_table_is_the_verdicts_the_probe_gives():
    from tl_lightning.evaluation.probe import VERDICTS

    page = (ROOT / "docs" / "probe.md").read_text()
    section = page.split("| val accuracy | meaning | start with |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.strip().splitlines()[1:]]
    expected = [[f"> {v.lowest:.2f}" if v.lowest else "below", v.meaning, v.preset.replace("`", "")] for v in VERDICTS]
    assert [[lowest, meaning, preset.replace("`", "")] for lowest, meaning, preset in rows] == expected


def test_every_guide_page_is_in_the_site_and_linked_from_the_readme():
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    site = (ROOT / "mkdocs.yml").read_text()
    readme = README.read_text()
    assert [p for p in pages if p not in site] == []
    generated = {"index.md", "api.md", "benchmarks.md"}  # the site's own pages
    assert [p for p in pages if p not in generated and f"](docs/{p})" not in readme] == []


def test_the_sites_benchmarks_page_includes_benchmarks_md_rather_than_a_copy():
    assert (ROOT / "docs" / "benchmarks.md").read_text() == '--8<-- "BENCHMARKS.md"\n'
    assert "pymdownx.snippets" in (ROOT / "mkdocs.yml").read_text()
