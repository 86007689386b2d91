"""The role's variables agree across defaults/main.yml, meta/argument_specs.yml and README.md."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[3] / "roles" / "postgresql"


def test_defaults_specs_and_readme_agree() -> None:
    defaults = set(yaml.safe_load((ROLE / "defaults/main.yml").read_text()))
    specs = set(yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"])
    readme = set(re.findall(r"^\| `(postgresql_[a-z0-9_]+)` \|", (ROLE / "README.md").read_text(), re.M))
    assert defaults == specs
    assert readme == specs
