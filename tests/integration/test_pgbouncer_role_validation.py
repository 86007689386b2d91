"""roles/pgbouncer refuses bad input before anything changes (issue 14), by running its real validate tasks with
ansible-playbook on this machine (a local connection; validate.yml contacts no host). Each bad case fails with a
message naming the setting and what would be valid; good input passes. The pool budget against the server's
max_connections is checked here with pgbouncer_server_max_connections given (with 0 the role asks the live server,
which molecule/pooling covers). No secret value may appear anywhere in the output."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.fixtures.role_validation import ROOT, validation_outcomes

SECRET_TAIL = "zq-pgb-tail-1"

GOOD: dict[str, Any] = {
    "pgbouncer_auth_password": f"a-real-auth-password-{SECRET_TAIL}",
    "pgbouncer_databases": [
        {"name": "appdb"},
        {"name": "appdb_session", "dbname": "appdb", "pool_mode": "session", "pool_size": 5},
        {"name": "reports", "host": "pg-proxy.example.org", "port": 5000, "reserve_pool_size": 2},
    ],
    "pgbouncer_stats_users": ["pgbouncer_stats"],
}

# name -> (variables over GOOD, expected fragments of the failure messages; None: validation passes)
CASES: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "good input": ({}, None),
    "good input within a given max_connections": ({"pgbouncer_server_max_connections": 100}, None),
    "pool size 0": (
        {"pgbouncer_databases": [{"name": "appdb", "pool_size": 0}]},
        ["pgbouncer_databases[0]", "pool_size 0; valid: a whole number, at least 1"],
    ),
    "an unknown pool mode on an entry": (
        {"pgbouncer_databases": [{"name": "appdb"}, {"name": "x", "dbname": "appdb", "pool_mode": "turbo"}]},
        ["pgbouncer_databases[1]", 'pool_mode "turbo"; valid: session, transaction, statement'],
    ),
    "an unknown default pool mode": (
        {"pgbouncer_pool_mode": "turbo"},
        ['pgbouncer_pool_mode="turbo"; valid: session, transaction, statement'],
    ),
    "default pool size 0": ({"pgbouncer_default_pool_size": 0}, ["pgbouncer_default_pool_size=0; valid: a whole"]),
    "a missing auth password": ({"pgbouncer_auth_password": ""}, ["pgbouncer_auth_password", "required"]),
    "a placeholder auth password": (
        {"pgbouncer_auth_password": f"CHANGE-ME-{SECRET_TAIL}"},
        ["pgbouncer_auth_password", "placeholder"],
    ),
    "no databases": ({"pgbouncer_databases": []}, ["pgbouncer_databases=[]", "at least one entry"]),
    "an unknown key on an entry": (
        {"pgbouncer_databases": [{"name": "appdb", "poolsize": 5}]},
        ["pgbouncer_databases[0]", "unknown keys poolsize"],
    ),
    "the console's name": ({"pgbouncer_databases": [{"name": "pgbouncer"}]}, ["pgbouncer_databases[0]", "name"]),
    "one name twice": (
        {"pgbouncer_databases": [{"name": "appdb"}, {"name": "appdb", "pool_mode": "session"}]},
        ["pgbouncer_databases names appdb more than once"],
    ),
    "a bad port on an entry": (
        {"pgbouncer_databases": [{"name": "appdb", "port": 70000}]},
        ["pgbouncer_databases[0]", "port 70000; valid: 1-65535"],
    ),
    "pools larger than max_connections allows": (
        {
            "pgbouncer_server_max_connections": 50,
            "pgbouncer_databases": [{"name": "appdb", "pool_size": 30}, {"name": "b", "pool_size": 20}],
        },
        ["pgbouncer_databases pool sizes", "need 50 server connections", "at most 37", "max_connections 50"],
    ),
    "a bad listen port": ({"pgbouncer_listen_port": 0}, ["pgbouncer_listen_port=0 (1-65535)"]),
    "an unknown client sslmode": ({"pgbouncer_client_tls_sslmode": "on"}, ['pgbouncer_client_tls_sslmode="on"']),
    "provided TLS without files": ({"pgbouncer_tls_mode": "provided"}, ["pgbouncer_tls_cert_file"]),
    "a setting the role owns": (
        {"pgbouncer_settings": {"auth_type": "md5", "server_idle_timeout": 300}},
        ["pgbouncer_settings: auth_type is set by nothing: the role enforces scram-sha-256"],
    ),
    "the auth user as postgres": ({"pgbouncer_auth_user": "postgres"}, ['pgbouncer_auth_user="postgres"']),
    "a malformed stats user": ({"pgbouncer_stats_users": ["Stats User"]}, ["pgbouncer_stats_users"]),
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, list[str]], str]:
    return validation_outcomes(tmp_path_factory, "pgbouncer", GOOD, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_pgbouncer_role_validation(outcome: tuple[dict[str, list[str]], str], name: str) -> None:
    results, _ = outcome
    messages = " | ".join(results[name])
    expected = CASES[name][1]
    if expected is None:
        assert not messages, f"{name}: refused: {messages}"
        return
    assert messages, f"{name}: accepted"
    for fragment in expected:
        assert fragment in messages, (fragment, messages)


def test_no_secret_value_is_printed(outcome: tuple[dict[str, list[str]], str]) -> None:
    _, output = outcome
    assert SECRET_TAIL not in output


def test_the_roles_refuse_the_same_placeholders() -> None:
    def placeholders(role: str) -> Any:
        role_vars = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text())
        return role_vars[f"__{role}_placeholder_secrets"]

    assert placeholders("pgbouncer") == placeholders("postgresql")
