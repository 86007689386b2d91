"""physical-restore's input checks: targets, labels and pgBackRest's config file, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgops.errors import ConfigError
from pgops.physical_restore import RestoreTarget, check_set_label, configured_pgdata, parse_target


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((None, None, None, None), []),
        (("latest", None, None, None), []),
        (("immediate", None, None, None), ["--type=immediate", "--target-action=promote"]),
        (
            (None, "2026-12-03T15:05:00.25+01:00", None, None),
            ["--type=time", "--target-action=promote", "--target=2026-12-03 14:05:00.250000+00"],
        ),
        (
            (None, "2026-12-03T14:05:00Z", None, None),
            ["--type=time", "--target-action=promote", "--target=2026-12-03 14:05:00.000000+00"],
        ),
        ((None, None, "1/a0000d8", None), ["--type=lsn", "--target-action=promote", "--target=1/A0000D8"]),
        (
            (None, None, None, "before-migration"),
            ["--type=name", "--target-action=promote", "--target=before-migration"],
        ),
    ],
)
def test_targets_become_pgbackrest_options(args: tuple[str | None, ...], options: list[str]) -> None:
    assert parse_target(*args).pgbackrest_options() == options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("yesterday", None, None, None), "--to='yesterday' is not valid; valid: latest, immediate"),
        ((None, "2026-12-03 14:05:00", None, None), "is not a time with a zone"),
        ((None, "", None, None), "is not a time with a zone"),
        ((None, None, "0/", None), "--to-lsn='0/' is not an LSN"),
        ((None, None, "123456789/0", None), "is not an LSN"),
        ((None, None, None, ""), "--to-name='' is not a restore point name"),
        ((None, None, None, " x"), "is not a restore point name"),
        ((None, None, None, "x" * 64), "is not a restore point name"),
        (("latest", "2026-12-03T14:05:00Z", None, None), "--to and --to-time were both given"),
    ],
)
def test_bad_targets_name_the_option(args: tuple[str | None, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_target(*args)


def test_set_labels() -> None:
    assert check_set_label(None) is None
    assert check_set_label("20261203-020000F") == "20261203-020000F"
    assert check_set_label("20261203-020000F_20261204-020000D") == "20261203-020000F_20261204-020000D"
    for bad in ("latest", "20261203-020000D", "20261203-020000F_x", ""):
        with pytest.raises(ConfigError, match="is not a pgBackRest backup label"):
            check_set_label(bad)


def test_pgdata_comes_from_the_stanza_then_conf_d(tmp_path: Path) -> None:
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\nrepo1-path=/r\n\n[main]\npg1-port=5432\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "main.conf").write_text("[main]\npg1-path=/srv/pg/main\n")
    assert configured_pgdata(str(conf), "main") == "/srv/pg/main"
    (tmp_path / "conf.d" / "main.conf").unlink()
    conf.write_text("[main]\npg1-path=/var/lib/postgresql/15/main\n")
    assert configured_pgdata(str(conf), "main") == "/var/lib/postgresql/15/main"
    with pytest.raises(ConfigError, match="has no pg1-path for stanza 'other'; pass --pgdata"):
        configured_pgdata(str(conf), "other")


def test_a_target_describes_itself() -> None:
    assert RestoreTarget("latest").describe() == "latest"
    assert RestoreTarget("lsn", "0/1").describe() == "lsn:0/1"
