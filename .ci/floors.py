"""The lowest versions pyproject.toml allows for its core dependencies, printed as pip constraints (`name==floor`),
so `.ci/run` can install exactly those and run the fast tests on them: a declared floor is a claim, and only an
install at the floor tests it. A dependency without a `>=` floor is an error: every floor is tested."""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
for requirement in project["dependencies"]:
    found = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(?:[^,]*,\s*)*>=\s*([0-9][^,;\s]*)", requirement)
    if not found:
        sys.exit(f"pyproject.toml: {requirement!r} declares no >= floor, so nothing can test it; give it one.")
    print(f"{found.group(1)}=={found.group(3)}")
