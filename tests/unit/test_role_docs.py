"""Each role's variables agree across defaults/main.yml, meta/argument_specs.yml and its README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES = sorted(
    p.parent.parent for p in (Path(__file__).resolve().parents[2] / "roles").glob("*/meta/argument_specs.yml")
)


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_specs_and_readme_agree(role: Path) -> None:
    defaults = set(yaml.safe_load((role / "defaults/main.yml").read_text()))
    specs = set(yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"])
    readme = set(re.findall(rf"^\| `({role.name}_[a-z0-9_]+)` \|", (role / "README.md").read_text(), re.M))
    assert defaults == specs
    assert readme == specs


def test_every_role_is_covered() -> None:
    assert {r.name for r in ROLES} >= {"postgresql", "postgresql_backup", "local_objectstore", "pgbackrest"}
