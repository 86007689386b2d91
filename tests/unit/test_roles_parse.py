"""pgops.roles: a pg_dumpall --globals-only script split and classified without being fooled by quoting,
and the plan that touches only missing roles unless overwriting was asked for."""

from __future__ import annotations

from pgops.roles import MODE_MISSING, MODE_OVERWRITE, classify, parse_globals, plan, split_statements

# Shaped like pg_dumpall 15's output, with names and comments chosen to break a naive splitter.
SCRIPT = """--
-- PostgreSQL database cluster dump
--

\\restrict abcDEF123

SET default_transaction_read_only = off;
SET standard_conforming_strings = on;

CREATE ROLE "grp; x'";
ALTER ROLE "grp; x'" WITH NOSUPERUSER INHERIT NOLOGIN;
CREATE ROLE "multi
line";
ALTER ROLE "multi
line" WITH LOGIN VALID UNTIL 'infinity';
CREATE ROLE app;
ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy';
COMMENT ON ROLE app IS 'it''s ; -- not a comment';
ALTER ROLE postgres WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:eA==$eQ==:eg==';
ALTER ROLE app SET work_mem TO '5MB';
GRANT "grp; x'" TO "multi
line" WITH ADMIN OPTION GRANTED BY postgres;
GRANT pg_read_all_data TO app GRANTED BY postgres;
CREATE TABLESPACE "ts one" OWNER app LOCATION '/srv/ts;1';
GRANT ALL ON TABLESPACE "ts one" TO "grp; x'";
COMMENT ON TABLESPACE "ts one" IS E'a\\'b;';

\\unrestrict abcDEF123

--
-- PostgreSQL database cluster dump complete
--
"""


def test_split_ignores_semicolons_in_quotes_comments_and_meta_commands() -> None:
    statements = split_statements(SCRIPT)
    assert len(statements) == 16
    assert statements[0] == "SET default_transaction_read_only = off"
    assert statements[4] == 'CREATE ROLE "multi\nline"'
    assert statements[8].startswith("COMMENT ON ROLE app IS 'it''s ; -- not a comment'")
    assert statements[-1] == "COMMENT ON TABLESPACE \"ts one\" IS E'a\\'b;'"
    assert not any("restrict" in s for s in statements)


def test_classify_names_the_object_of_each_statement() -> None:
    got = [(s.kind, s.objects, s.creates) for s in parse_globals(SCRIPT)]
    assert got == [
        ("setup", (), False),
        ("setup", (), False),
        ("role", ("grp; x'",), True),
        ("role", ("grp; x'",), False),
        ("role", ("multi\nline",), True),
        ("role", ("multi\nline",), False),
        ("role", ("app",), True),
        ("role", ("app",), False),
        ("role", ("app",), False),
        ("role", ("postgres",), False),
        ("role", ("app",), False),
        ("membership", ("multi\nline", "grp; x'"), False),
        ("membership", ("app", "pg_read_all_data"), False),
        ("tablespace", ("ts one",), True),
        ("tablespace", ("ts one",), False),
        ("tablespace", ("ts one",), False),
    ]
    assert classify("DROP ROLE app").kind == "unknown"


def test_labels_never_carry_the_statement_text() -> None:
    alter = parse_globals(SCRIPT)[7]
    assert "SCRAM" not in alter.label and alter.label == "ALTER ROLE 'app'"


def test_missing_mode_touches_only_what_the_server_lacks() -> None:
    p = plan(parse_globals(SCRIPT), {"postgres", "app", "pg_read_all_data"}, {"pg_default", "pg_global"}, MODE_MISSING)
    assert p.create_roles == ("grp; x'", "multi\nline")
    assert p.create_tablespaces == ("ts one",)
    run = [(s.kind, s.objects) for s in p.statements if s.kind != "setup"]
    assert ("role", ("app",)) not in run and ("role", ("postgres",)) not in run
    assert ("membership", ("multi\nline", "grp; x'")) in run  # new member of a new group
    assert ("membership", ("app", "pg_read_all_data")) not in run  # both sides exist: left alone
    assert p.skipped == 6


def test_missing_mode_creates_a_role_whose_create_statement_pg_dumpall_left_out() -> None:
    p = plan(parse_globals(SCRIPT), {"app"}, set(), MODE_MISSING)
    texts = [s.text for s in p.statements if s.objects == ("postgres",)]
    assert texts[0] == 'CREATE ROLE "postgres"' and texts[1].startswith("ALTER ROLE postgres WITH SUPERUSER")


def test_overwrite_mode_alters_existing_roles_but_never_creates_them_again() -> None:
    live = {"postgres", "app", "grp; x'", "multi\nline", "pg_read_all_data"}
    p = plan(parse_globals(SCRIPT), live, {"ts one"}, MODE_OVERWRITE)
    assert p.create_roles == () and p.create_tablespaces == ()
    assert not any(s.creates for s in p.statements)
    assert ("role", ("app",)) in [(s.kind, s.objects) for s in p.statements]
    assert ("membership", ("app", "pg_read_all_data")) in [(s.kind, s.objects) for s in p.statements]
