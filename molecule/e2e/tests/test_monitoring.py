"""Monitoring end to end (issue 14): Prometheus on pgops-e2e-prom scrapes pgops-e2e-db's exporters and evaluates the
real alert rules (monitoring/alerts/pgops.rules.yml). PostgreSQL is stopped: PostgresDown must fire within its `for`
plus two scrape intervals, and resolve once PostgreSQL is back.

This file runs after test_e2e.py (testinfra takes files alphabetically). The PostgreSQL it stops is started again,
and waited for, whatever happens, so the host is left as it was found."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import yaml

from conftest import DB, TRICKY_DB

# Each test names its hosts itself (db, prom fixtures); run each once.
testinfra_hosts = [f"podman://{DB}"]

ALERT = "PostgresDown"
SLACK = 5.0  # seconds: an API poll every second, podman exec, the server's shutdown
_GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
T = TypeVar("T")


def api(prom: Any, path: str, **params: str) -> Any:
    """GET Prometheus's HTTP API on the Prometheus host itself; its `data`."""
    url = f"http://127.0.0.1:9090/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
    result = prom.run("python3 -c %s %s", _GET, url)
    assert result.rc == 0, f"{url}: {result.stderr}"
    doc = json.loads(result.stdout)
    assert doc["status"] == "success", doc
    return doc["data"]


def query(prom: Any, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query: each series' labels and value."""
    data = api(prom, "query", query=expr)
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def seconds(duration: str) -> float:
    """A Prometheus duration (1m, 90s, 1h30m) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def poll(what: str, probe: Callable[[], T | None], timeout: float) -> tuple[T, float]:
    """Call probe every second until it returns something; that and the seconds it took."""
    start = time.monotonic()
    while True:
        found = probe()
        if found is not None:
            return found, time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)


def active_alerts(prom: Any) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = api(prom, "alerts")["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == ALERT and a["labels"].get("instance") == DB]


def intervals(prom: Any) -> tuple[float, float]:
    """The scrape and evaluation intervals Prometheus runs with."""
    config = yaml.safe_load(api(prom, "status/config")["yaml"])["global"]
    return seconds(config["scrape_interval"]), seconds(config["evaluation_interval"])


def test_prometheus_scrapes_the_database_hosts_exporters(prom: Any) -> None:
    def up() -> list[str] | None:
        targets = api(prom, "targets", state="active")["activeTargets"]
        ours = {t["labels"]["job"]: t["health"] for t in targets if t["labels"].get("instance") == DB}
        return sorted(ours) if ours == {"postgres": "up", "node": "up"} else None

    poll("the postgres and node targets of the database host are up", up, 60)
    assert query(prom, f'pg_up{{instance="{DB}"}}') == [({"__name__": "pg_up", "instance": DB, "job": "postgres"}, 1.0)]
    # The login holds pg_monitor: the exporter reads the server's statistics, not only pg_up.
    assert query(prom, f'pg_stat_database_xact_commit{{instance="{DB}", datname="appdb"}}')[0][1] > 0


def test_the_backup_runs_metrics_reach_prometheus(prom: Any) -> None:
    """pgops.prom, written by cron's jobs in side_effect.yml, read by node_exporter's textfile collector."""
    attempts = {m["database"]: v for m, v in query(prom, f'pgops_backup_last_attempt_success{{instance="{DB}"}}')}
    for database in ("appdb", TRICKY_DB, "@globals"):
        assert attempts[database] == 1, (database, attempts)
        success = query(prom, f'pgops_backup_last_success_timestamp_seconds{{instance="{DB}", database="{database}"}}')
        assert len(success) == 1 and success[0][1] > 0, database
    assert query(prom, f'node_textfile_scrape_error{{instance="{DB}"}}')[0][1] == 0


def test_postgresql_down_fires_the_alert_and_its_return_resolves_it(db: Any, prom: Any) -> None:
    project = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
    groups = yaml.safe_load((project / "monitoring/alerts/pgops.rules.yml").read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get("alert") == ALERT)
    pending_for = seconds(rule.get("for", "0s"))
    scrape, evaluation = intervals(prom)
    fire_within = pending_for + 2 * scrape + SLACK
    resolve_within = 2 * scrape + evaluation + SLACK  # a first scrape may still find the old, broken connection
    assert active_alerts(prom) == [], "the alert is active before PostgreSQL is stopped"

    version, cluster = db.check_output("pg_lsclusters --no-header").split()[:2]
    unit = f"postgresql@{version}-{cluster}"
    try:
        db.check_output(f"systemctl stop {unit}")

        def firing() -> dict[str, Any] | None:
            return next((a for a in active_alerts(prom) if a["state"] == "firing"), None)

        alert, fired_after = poll(f"{ALERT} firing", firing, fire_within + 30)
        assert fired_after <= fire_within, f"{ALERT} fired after {fired_after:.0f} s, more than {fire_within:.0f} s"
        assert alert["labels"]["severity"] == "page" and alert["annotations"]["summary"]
    finally:
        db.check_output(f"systemctl start {unit}")
        poll("PostgreSQL accepts connections again", lambda: db.run("pg_isready -q").rc == 0 or None, 60)

    _, resolved_after = poll(f"{ALERT} resolved", lambda: active_alerts(prom) == [] or None, resolve_within + 30)
    assert resolved_after <= resolve_within, f"{ALERT} resolved after {resolved_after:.0f} s"
    poll("pg_up 1 again", lambda: query(prom, f'pg_up{{instance="{DB}"}} == 1') or None, 30)
    print(  # the scenario's summary (-rP) shows it
        f"{ALERT} (for {pending_for:.0f} s, scrape {scrape:.0f} s, evaluation {evaluation:.0f} s): fired "
        f"{fired_after:.1f} s after PostgreSQL stopped (limit {fire_within:.0f} s), resolved {resolved_after:.1f} s "
        f"after it accepted connections again (limit {resolve_within:.0f} s)"
    )
