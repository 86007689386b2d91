"""The canonical form of a dump that the end-to-end checks compare (tests/fixtures/dumps.py)."""

from __future__ import annotations

from tests.fixtures.dumps import canonical

SOURCE = """\
CREATE TABLE public.t (a integer);
GRANT ALL ON TABLE public.t TO app_rw;
GRANT SELECT ON TABLE public.t TO app_ro;

ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA public GRANT ALL ON SEQUENCES  TO app_rw;
ALTER DEFAULT PRIVILEGES FOR ROLE o IN SCHEMA public GRANT SELECT ON SEQUENCES  TO app_ro;
COPY public.t (a) FROM stdin;
2
1
\\.
"""


def test_statements_of_one_acl_entry_compare_in_any_order() -> None:
    lines = SOURCE.splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]  # the table's grants
    lines[4], lines[5] = lines[5], lines[4]  # the default privileges
    restored = "".join(lines)
    assert restored != SOURCE
    assert canonical(restored) == canonical(SOURCE)


def test_everything_else_still_counts() -> None:
    assert canonical(SOURCE.replace("2\n1\n", "1\n2\n")) != canonical(SOURCE)  # row order is data order
    assert canonical(
        SOURCE.replace("TO app_ro;\n\n", "TO app_ro;\nGRANT INSERT ON TABLE public.t TO app_ro;\n\n", 1)
    ) != canonical(SOURCE)
    moved = SOURCE.replace("GRANT SELECT ON TABLE public.t TO app_ro;\n", "").replace(
        "COPY", "GRANT SELECT ON TABLE public.t TO app_ro;\nCOPY"
    )
    assert canonical(moved) != canonical(SOURCE)  # a grant that moved to another entry
