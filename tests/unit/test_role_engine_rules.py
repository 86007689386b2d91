"""The postgresql_backup role checks some settings before it writes them; its rules are the engine's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from pgops.settings import _NAME_RE, SPECS
from pgops.storage.url import _BUCKET_RE

ROLE = Path(__file__).resolve().parents[2] / "roles" / "postgresql_backup"


def _assert_that(task_name: str) -> str:
    tasks = yaml.safe_load((ROLE / "tasks" / "validate.yml").read_text())
    (task,) = [t for t in tasks if t["name"] == task_name]
    that: str = task["ansible.builtin.assert"]["that"]
    return that


def _role_vars(role: Path = ROLE) -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load((role / "vars" / "main.yml").read_text())
    return loaded


def test_target_name_rule_is_the_engines() -> None:
    # Both the role's target checks (postgresql_backup_target, postgresql_backup_restore_test_targets) use it.
    assert "match(__postgresql_backup_target_re)" in _assert_that("Refuse a target name that cannot be a store prefix")
    pattern = _role_vars()["__postgresql_backup_target_re"]
    assert isinstance(pattern, str)
    assert pattern == _NAME_RE.pattern
    for name in ("a", "pg-prod-1", "db_2.example", "x" * 63, "x" * 64, "-lead", "has space", ""):
        assert bool(re.match(pattern, name)) == bool(_NAME_RE.match(name)), name


def test_storage_url_bucket_rules_are_the_engines() -> None:
    that = _assert_that("Refuse a missing or malformed storage URL")
    for scheme, rule in _BUCKET_RE.items():
        assert f"{scheme}://{rule.pattern.strip('^$')}(/.*)?" in that, scheme


def test_secret_keys_are_the_engines() -> None:
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert sorted(role_vars["__postgresql_backup_secret_keys"]) == sorted(s.key for s in SPECS if s.secret)
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    for spec in SPECS:
        if spec.secret:
            assert spec.key in specs["postgresql_backup_secrets"]["description"], spec.key


def test_the_roles_refuse_the_same_placeholders() -> None:
    # The roles cannot share a variable; each keeps the list, and this keeps them one list.
    server = _role_vars(ROLE.parent / "postgresql")["__postgresql_placeholder_secrets"]
    assert server == _role_vars()["__postgresql_backup_placeholder_secrets"]
    assert server == _role_vars(ROLE.parent / "pgbackrest")["__pgbackrest_placeholder_secrets"]


def test_stanza_rule_is_the_backup_roles_target_rule() -> None:
    # pgBackRest's stanza rule (letters, digits, . _ -, at most 63, first alnum) is pgops' name rule too.
    assert _role_vars(ROLE.parent / "pgbackrest")["__pgbackrest_stanza_re"] == _NAME_RE.pattern
