"""The README's library example must run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lightning_example_runs(tmp_path, monkeypatch):
    section = README.read_text().split("## Use it in your own Lightning project", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and checkpoints land here
    monkeypatch.setenv("HOME", str(tmp_path))  # DigitsDataModule's default cache lives under ~
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["restored"].class_names == [str(i) for i in range(10)]
    assert len(namespace["probabilities"]) == 32  # batches of the 1,000 test digits


def test_readme_probe_table_is_the_verdicts_the_probe_gives():
    from tl_lightning.evaluation.probe import VERDICTS

    section = README.read_text().split("| val accuracy | meaning | start with |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.strip().splitlines()[1:]]
    expected = [[f"> {v.lowest:.2f}" if v.lowest else "below", v.meaning, v.preset.replace("`", "")] for v in VERDICTS]
    assert [[lowest, meaning, preset.replace("`", "")] for lowest, meaning, preset in rows] == expected
