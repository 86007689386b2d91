"""The alert rules (monitoring/alerts) are complete, tested by promtool in both directions and documented.

promtool itself (`make lint`) runs the rules; these checks read the files only: every rule has its `for:`, severity,
summary and a runbook whose anchor exists; every alert has a promtool case where it fires (labels and annotations
checked) and one where it stays silent, and a rule with a `for:` is caught one evaluation before it fires; every
alert is in the tables of docs/monitoring.md; every metric a rule reads is one that pgops, the exporters or
queries.yml define.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgops import metrics

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "monitoring" / "alerts"
RULES_FILE = ALERTS / "pgops.rules.yml"
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
QUERIES_FILE = ROOT / "monitoring" / "postgres_exporter" / "queries.yml"
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
SEVERITIES = {"page", "ticket"}

# Metrics the rules read that come from elsewhere than pgops and queries.yml, each checked against Debian's package:
# prometheus-postgres-exporter 0.11.1 (Debian 12; its output, run against PostgreSQL 15), Patroni 3.0.2 (Debian 12;
# api.py) and prometheus-pgbouncer-exporter 0.10.2 (Debian 13; its output, run against PgBouncer 1.18); `up` is
# Prometheus' own.
EXTERNAL_METRICS = {
    "up",
    "pg_up",
    "pg_settings_max_connections",
    "pg_stat_activity_count",
    "pg_stat_database_deadlocks",
    "pg_replication_slots_active",
    "pg_stat_archiver_archived_count",
    "pg_stat_archiver_failed_count",
    "patroni_primary",
    "pgbouncer_up",
    "pgbouncer_pools_client_waiting_connections",
}
METRIC_NAME = re.compile(r"\b(?:up|(?:pg|pgops|patroni|pgbouncer)_[a-z0-9_]+)\b")
DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def seconds(duration: str) -> float:
    """A Prometheus duration ("90s", "1h30m", "35d") in seconds; anything else fails the test."""
    parts = DURATION_PART.findall(duration)
    assert parts, f"not a duration: {duration!r}"
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * UNIT_SECONDS[u] for n, u in parts)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    found: set[str] = set()
    repeats: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        heading = None if in_fence else re.match(r"#{1,6} +(.+?) *$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            n = repeats.get(slug, 0)
            repeats[slug] = n + 1
            found.add(f"{slug}-{n}" if n else slug)
    return found


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


RULES = load_rules()
BY_NAME = {rule["alert"]: rule for rule in RULES}


def promtool_cases() -> list[tuple[str, str, float, float, dict[str, Any]]]:
    """(test file and group, alertname, eval time in s, evaluation interval in s, the case) for every case."""
    cases = []
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../pgops.rules.yml"], f"{path.name} must test the rules file itself"
        interval = seconds(doc.get("evaluation_interval", "1m"))
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                where = f"{path.name}: {group.get('name', '?')}"
                cases.append((where, case["alertname"], seconds(case["eval_time"]), interval, case))
    return cases


CASES = promtool_cases()


def test_alert_names_are_unique() -> None:
    assert len(BY_NAME) == len(RULES)


@pytest.mark.parametrize("rule", RULES, ids=list(BY_NAME))
def test_rule_has_for_severity_summary_and_runbook(rule: dict[str, Any]) -> None:
    seconds(rule["for"])
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == {"summary", "runbook"}
    assert rule["annotations"]["summary"].strip()
    path, _, anchor = rule["annotations"]["runbook"].partition("#")
    assert path.startswith("docs/") and path.endswith(".md"), rule["annotations"]["runbook"]
    assert (ROOT / path).is_file(), f"{rule['alert']}: no file {path}"
    assert anchor in anchors((ROOT / path).read_text()), f"{rule['alert']}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("rule", RULES, ids=list(BY_NAME))
def test_every_alert_fires_in_one_case_and_stays_silent_in_another(rule: dict[str, Any]) -> None:
    mine = [c for c in CASES if c[1] == rule["alert"]]
    firing = [c for c in mine if c[4].get("exp_alerts")]
    assert firing, f"{rule['alert']}: no promtool case where it fires"
    assert any(not c[4].get("exp_alerts") for c in mine), f"{rule['alert']}: no promtool case where it is silent"
    for where, _, _, _, case in firing:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], where
            assert alert["exp_annotations"]["runbook"] == rule["annotations"]["runbook"], where
            assert alert["exp_annotations"]["summary"].strip(), where


@pytest.mark.parametrize("rule", [r for r in RULES if seconds(r["for"]) > 0], ids=lambda r: r["alert"])
def test_a_for_window_is_tested_one_evaluation_before_it_ends(rule: dict[str, Any]) -> None:
    silent = {(c[0], c[2] + c[3]) for c in CASES if c[1] == rule["alert"] and not c[4].get("exp_alerts")}
    firing = {(c[0], c[2]) for c in CASES if c[1] == rule["alert"] and c[4].get("exp_alerts")}
    assert silent & firing, f"{rule['alert']}: no silent evaluation one step before a firing one in the same test"


def test_no_case_names_an_unknown_alert() -> None:
    assert {c[1] for c in CASES} <= set(BY_NAME)


def test_every_alert_is_in_the_tables_of_monitoring_md() -> None:
    text = MONITORING_DOC.read_text()
    section = text[text.index("\n## Alert rules\n") :]
    documented = re.findall(r"^\| `([A-Za-z0-9]+)` \|", section, re.M)
    assert sorted(documented) == sorted(BY_NAME)


def custom_metrics() -> set[str]:
    """The metric names queries.yml makes: <query>_<column> for every GAUGE and COUNTER column."""
    names = set()
    for query, spec in yaml.safe_load(QUERIES_FILE.read_text()).items():
        for column in spec["metrics"]:
            ((name, meta),) = column.items()
            if meta["usage"] != "LABEL":
                names.add(f"{query}_{name}")
    return names


def test_queries_yml_has_the_0_11_format() -> None:
    for query, spec in yaml.safe_load(QUERIES_FILE.read_text()).items():
        assert set(spec) == {"query", "master", "metrics"}, query
        assert spec["master"] is True, f"{query}: reads cluster-wide views, so once per server"
        assert isinstance(spec["query"], str) and spec["query"].lstrip().upper().startswith("SELECT"), query
        for column in spec["metrics"]:
            ((_, meta),) = column.items()
            assert meta["usage"] in {"LABEL", "GAUGE", "COUNTER"}, query
            assert meta["description"].strip(), query


def test_rules_read_only_metrics_that_exist() -> None:
    pgops = {
        *metrics.GAUGES,
        *metrics.PHYSICAL_GAUGES,
        *metrics.PHYSICAL_TYPED_GAUGES,
        *metrics.RUN_GAUGES,
    }
    known = pgops | custom_metrics() | EXTERNAL_METRICS
    used = {name for rule in RULES for name in METRIC_NAME.findall(re.sub(r'"[^"]*"', '""', rule["expr"]))}
    assert used - known == set()
    assert {"pg_postmaster_start_time_seconds", "pg_replication_lag", "pgops_rpo_seconds"} <= used
