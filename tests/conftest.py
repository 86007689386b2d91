"""Shared fixtures. Real PostgreSQL clusters (fixtures/pg.py) and real object-store APIs (fixtures/objstore.py)."""

pytest_plugins = [
    "tests.fixtures.pg",
    "tests.fixtures.objstore",
    "tests.fixtures.engine",
    "tests.fixtures.pgbackrest",
    "tests.fixtures.pgbackrest_run",
]
