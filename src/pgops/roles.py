"""Restoring roles and tablespaces from a `pg_dumpall --globals-only` script without harming live ones.

Replaying the whole script over a live server gives every existing role its backup-time password and
attributes back (a rotated password is undone, a NOLOGIN role can log in again). So the script is split
into statements (quote-aware), each statement is classified by the role or tablespace it is about, and
only the statements wanted are run, one by one, through psycopg:

- default ("missing"): roles and tablespaces that do not exist on this server are created with their
  attributes, settings and comments; memberships are granted where the member or the granted role is
  one of the new roles. Existing roles and tablespaces are not touched.
- "overwrite": everything in the script is applied to existing roles too (CREATE of an existing object is
  skipped). The caller saves the current globals first.

Statements are never logged (ALTER ROLE carries password verifiers); errors name the kind and the object.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pgops.errors import IntegrityError, PostgresError
from pgops.log import q
from pgops.pg import quoted_identifier_at

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

MODE_MISSING = "missing"
MODE_OVERWRITE = "overwrite"


@dataclasses.dataclass(frozen=True)
class Statement:
    text: str
    kind: str  # "setup", "role", "membership", "tablespace" or "unknown"
    objects: tuple[str, ...] = ()  # role: (name,); tablespace: (name,); membership: (member, granted...)
    creates: bool = False  # CREATE ROLE / CREATE TABLESPACE

    @property
    def label(self) -> str:
        """What the statement is about, for logs and errors: never its text (passwords)."""
        if self.kind == "membership":
            return f"GRANT {', '.join(map(repr, self.objects[1:]))} TO {self.objects[0]!r}"
        words = " ".join(_words(self.text)[:2]).upper()
        return f"{words} {', '.join(map(repr, self.objects))}".strip()


def split_statements(script: str) -> list[str]:
    """Split a psql script into SQL statements. Knows '...' (and E'...'), "..." and -- comments; drops
    psql meta-commands (\\restrict, \\connect ...) that start a line between statements."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        if ch == "\\" and not "".join(buf).strip():
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
            buf.clear()
            continue
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end + 1
            buf.append("\n")
            continue
        if ch in "'\"":
            escapes = ch == "'" and i > 0 and script[i - 1] in "eE" and (i < 2 or not script[i - 2].isalnum())
            j = i + 1
            while j < n:
                if escapes and script[j] == "\\":
                    j += 2
                    continue
                if script[j] == ch:
                    if j + 1 < n and script[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            if j >= n:
                raise IntegrityError("globals script: an unterminated quoted string")
            buf.append(script[i : j + 1])
            i = j + 1
            continue
        if ch == ";":
            text = "".join(buf).strip()
            if text:
                out.append(text)
            buf.clear()
            i += 1
            continue
        buf.append(ch)
        i += 1
    if "".join(buf).strip():
        raise IntegrityError("globals script: the last statement has no terminating ';'")
    return out


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """(type, value) pairs: ('word', as written), ('quoted', the unquoted name), ('string', ''), ('punct', ch).
    Compare keywords case-insensitively."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == '"':
            name, i = quoted_identifier_at(text, i)
            yield "quoted", name
        elif ch == "'":
            j = i + 1
            while j < n and not (text[j] == "'" and not (j + 1 < n and text[j + 1] == "'")):
                j += 2 if text[j] == "'" else 1
            yield "string", ""
            i = j + 1
        elif ch.isalnum() or ch in "_$":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            yield "word", text[i:j]
            i = j
        else:
            yield "punct", ch
            i += 1


def _words(text: str) -> list[str]:
    return [v for t, v in _tokens(text) if t == "word"][:3]


def _name(token: tuple[str, str]) -> str | None:
    kind, value = token
    if kind == "quoted":
        return value
    if kind == "word":
        return value.lower()  # the server folds bare identifiers
    return None


def _names_until(tokens: list[tuple[str, str]], start: int, stop: frozenset[str]) -> tuple[list[str], int]:
    """A comma-separated list of names from tokens[start], up to a keyword in `stop` (or the end)."""
    names: list[str] = []
    i = start
    while i < len(tokens):
        tok = tokens[i]
        if tok[0] == "word" and tok[1].upper() in stop:
            break
        if tok != ("punct", ","):
            name = _name(tok)
            if name is None:
                break
            names.append(name)
        i += 1
    return names, i


def classify(text: str) -> Statement:
    tokens = list(_tokens(text))
    words = [v.upper() if t == "word" else None for t, v in tokens]

    def at(i: int) -> str | None:
        return words[i] if i < len(words) else None

    def name_at(i: int) -> str | None:
        return _name(tokens[i]) if i < len(tokens) else None

    head = at(0)
    if head == "SET":
        return Statement(text, "setup")
    if head in ("CREATE", "ALTER") and at(1) in ("ROLE", "TABLESPACE"):
        obj = name_at(2)
        if obj is not None:
            kind = "role" if at(1) == "ROLE" else "tablespace"
            return Statement(text, kind, (obj,), creates=head == "CREATE")
    if head in ("COMMENT", "SECURITY"):
        for i in range(1, min(len(tokens) - 1, 6)):
            if at(i) == "ON" and at(i + 1) in ("ROLE", "TABLESPACE"):
                obj = name_at(i + 2)
                if obj is not None:
                    return Statement(text, "role" if at(i + 1) == "ROLE" else "tablespace", (obj,))
    if head in ("GRANT", "REVOKE"):
        if "ON" in words:
            on = words.index("ON")
            if at(on + 1) == "TABLESPACE" and name_at(on + 2) is not None:
                return Statement(text, "tablespace", (str(name_at(on + 2)),))
        elif head == "GRANT":
            granted, to = _names_until(tokens, 1, frozenset({"TO"}))
            members, _ = _names_until(tokens, to + 1, frozenset({"WITH", "GRANTED"}))
            if granted and at(to) == "TO" and len(members) == 1:  # pg_dumpall writes one member per GRANT
                return Statement(text, "membership", (members[0], *granted))
    return Statement(text, "unknown")


def parse_globals(script: str) -> list[Statement]:
    return [classify(s) for s in split_statements(script)]


@dataclasses.dataclass(frozen=True)
class RolesPlan:
    statements: tuple[Statement, ...]
    create_roles: tuple[str, ...]  # roles this plan creates
    create_tablespaces: tuple[str, ...]
    skipped: int  # statements left out (about existing roles or tablespaces, or not understood)
    unknown: tuple[str, ...]  # labels of statements not understood (never run)


def plan(statements: list[Statement], live_roles: set[str], live_tablespaces: set[str], mode: str) -> RolesPlan:
    """Choose what to run. Order is the script's (roles, memberships, tablespaces)."""
    roles = [s.objects[0] for s in statements if s.kind == "role" and s.creates]
    roles += [s.objects[0] for s in statements if s.kind == "role" and not s.creates and s.objects[0] not in roles]
    spaces = [s.objects[0] for s in statements if s.kind == "tablespace" and s.creates]
    new_roles = [r for r in roles if r not in live_roles]
    new_spaces = [t for t in spaces if t not in live_tablespaces]
    chosen: list[Statement] = []
    unknown: list[str] = []
    created: set[str] = set()
    skipped = 0
    for st in statements:
        if st.kind == "unknown":
            unknown.append(st.label)
            skipped += 1
            continue
        if st.kind == "setup":
            keep = True
        elif st.kind == "role":
            name = st.objects[0]
            keep = name in new_roles or (mode == MODE_OVERWRITE and not st.creates)
            if keep and name in new_roles and name not in created:
                if not st.creates:  # pg_dumpall leaves out CREATE ROLE for the role that ran it
                    chosen.append(_create_role(name))
                created.add(name)
        elif st.kind == "membership":
            member, granted = st.objects[0], st.objects[1:]
            keep = mode == MODE_OVERWRITE or member in new_roles or any(g in new_roles for g in granted)
        else:  # tablespace
            name = st.objects[0]
            keep = name in new_spaces or (mode == MODE_OVERWRITE and not st.creates)
        if keep:
            chosen.append(st)
        else:
            skipped += 1
    return RolesPlan(tuple(chosen), tuple(new_roles), tuple(new_spaces), skipped, tuple(unknown))


def _create_role(name: str) -> Statement:
    ident = '"' + name.replace('"', '""') + '"'
    return Statement(f"CREATE ROLE {ident}", "role", (name,), creates=True)


def live_globals(conn: psycopg.Connection[Any]) -> tuple[set[str], set[str]]:
    roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    spaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace").fetchall()}
    return roles, spaces


def apply_plan(conn: psycopg.Connection[Any], p: RolesPlan, *, source: str) -> None:
    """Roles and memberships in one transaction (all or none); tablespaces after it, one by one (CREATE
    TABLESPACE cannot run in a transaction block)."""
    import psycopg

    def run(st: Statement) -> None:
        try:
            conn.execute(st.text.encode())  # bytes: no client-side placeholder parsing of '%'
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PostgresError(f"restoring globals from {source}: {st.label} failed: {first}") from None

    setup = [s for s in p.statements if s.kind == "setup"]
    body = [s for s in p.statements if s.kind in ("role", "membership")]
    spaces = [s for s in p.statements if s.kind == "tablespace"]
    for st in setup:
        run(st)
    with conn.transaction():
        for st in body:
            run(st)
    for st in spaces:
        run(st)


def drop_created(conn: psycopg.Connection[Any], p: RolesPlan) -> None:
    """Undo a plan's creations after the restore that needed them failed. Never raises: says what is left."""
    import psycopg
    from psycopg import sql

    for name in p.create_tablespaces:
        try:
            conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error as e:
            log.warning("event=globals_left tablespace=%s error=%s", q(name), q(str(e).strip().splitlines()[0]))
    if not p.create_roles:
        return
    try:
        with conn.transaction():
            for name in reversed(p.create_roles):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        log.info("event=globals_undone roles=%s", q(",".join(p.create_roles)))
    except psycopg.Error as e:
        log.warning(
            "event=globals_left roles=%s error=%s",
            q(",".join(p.create_roles)),
            q(str(e).strip().splitlines()[0]),
        )
