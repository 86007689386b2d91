"""docs/compose.md as a team runs it, under real podman-compose: the local stack (docker-compose.yml) and
the bundle image (Dockerfile).

Every command block of the page runs, in the page's order, and the output the page shows is checked
(`...` in a shown line stands for any text). One stack per module, started with the page's own commands
under a unique project name (COMPOSE_PROJECT_NAME) and free loopback ports, in an environment without
PGOPS_BASE_IMAGE so that .env must be read: PostgreSQL with the demo database, the S3 and GCS emulators
and two runners. Besides the page, each runner's jobs run exactly as its /etc/cron.d/pgops has them: the
command line, the user and cron's minimal environment (no PGOPS_* variables from the container), so the
env file alone has to carry the settings. Then the backups must be listed as good, be in the emulators
byte for byte (read from the host through the published loopback ports), show in the metrics file, and
restore into a database that dumps identically to the source. The stack is torn down with its volumes
(the page's `down -v`) whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgops.manifest import iso
from tests.fixtures.objstore import gcs_api, gcs_get_object, gcs_object_names, gcs_quote
from tests.fixtures.pg import free_port
from tests.fixtures.terminal import on_terminal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "molecule" / "containers.conf"
BASE_IMAGE = "localhost/pgops-debian:12"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
BUNDLE_IMAGE = "localhost/pgops-bundle:latest"  # the page builds it as `pgops-bundle`
DOC = ROOT / "docs" / "compose.md"
OVERRIDE = ROOT / "docker-compose.override.yml"
# The compose file's throwaway emulator values.
BUCKET = "pgops-backups"
PREFIX = "compose"
TARGET = "demo-postgres"
PG_PASSWORD = "pgops-compose-demo"
S3_KEY = "pgops-compose-demo"
ENV_FILE = "/etc/pgops/pgops.env"
METRICS_FILE = "/var/lib/pgops/metrics/pgops.prom"
JOB_ORDER = ["backup", "retention", "verify", "restore-test"]  # by log file name, as a night would run them
HEALTH_TIMEOUT = 180
SERVICES = [
    *("postgres", "s3", "gcs", "runner", "runner-gcs"),
    *("postgres-exporter", "node-exporter", "node-exporter-gcs", "prometheus"),
]


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env or podman_env(), capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def check(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = run(argv, env, timeout)
    assert result.returncode == 0, (
        f"{shlex.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n"
        f"--- stderr\n{result.stderr[-4000:]}"
    )
    return result.stdout


# ---- prerequisites: the wheelhouse and the base image -------------------------------------------------


def _newest_mtime(paths: list[Path]) -> float:
    """Of the source files only: byte-code caches and egg-info change without a change to the package."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    generated = ("__pycache__", ".egg-info")
    return max(f.stat().st_mtime for f in files if not any(part.endswith(generated) for part in f.parts))


def wheels_are_stale() -> bool:
    dist = ROOT / "dist"
    wheels = list((dist / "pgops").glob("pgops-*.whl"))
    needed = [dist / "pgops" / "constraints.txt", dist / "bundle" / "constraints.txt"]
    if not wheels or not all(p.exists() for p in needed) or not list((dist / "objectstore").glob("fake_gcs*.whl")):
        return True
    sources = [ROOT / "src", ROOT / "pyproject.toml", ROOT / "requirements", ROOT / "scripts" / "build-wheels.sh"]
    return min(w.stat().st_mtime for w in wheels) < _newest_mtime(sources)


@pytest.fixture(scope="session")
def wheelhouse() -> None:
    """dist/pgops, dist/objectstore and dist/bundle, rebuilt when missing or older than the sources (the
    script takes a lock and swaps each set in whole, so parallel runs and readers are safe)."""
    if wheels_are_stale():
        # with the venv that runs the tests (a worktree may have no .venv of its own)
        check([str(ROOT / "scripts" / "build-wheels.sh")], {**podman_env(), "VENV": sys.prefix})


@pytest.fixture(scope="session")
def base_image() -> str:
    """The local Debian 12 image (built from Debian's archive when missing; a no-op when up to date)."""
    check([str(ROOT / "molecule" / "images" / "build.sh"), "12"], timeout=900)
    return BASE_IMAGE


# ---- the stack --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Stack:
    project: str
    env: dict[str, str]
    ports: dict[str, int]
    started: float  # time.time() before any job ran

    def compose(self, *args: str, timeout: float = 600) -> str:
        return check([PODMAN_COMPOSE, "-p", self.project, *args], self.env, timeout)

    def container(self, service: str) -> str:
        names = check(
            [
                *("podman", "ps", "-a", "--format", "{{.Names}}"),
                *("--filter", f"label=io.podman.compose.project={self.project}"),
                *("--filter", f"label=io.podman.compose.service={service}"),
            ]
        ).split()
        assert len(names) == 1, f"service {service}: containers {names}"
        return names[0]

    def exec(self, service: str, *argv: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return run(["podman", "exec", "--user", user, self.container(service), *argv])

    def output(self, service: str, *argv: str, user: str = "root") -> str:
        result = self.exec(service, *argv, user=user)
        assert result.returncode == 0, f"{service}: {shlex.join(argv)} exited {result.returncode}: {result.stderr}"
        return result.stdout

    def logs(self) -> str:
        parts = []
        for service in SERVICES:
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                result = run(["podman", "logs", "--tail", "40", self.container(service)], timeout=30)
                parts.append(f"--- {service}\n{result.stdout}{result.stderr}")
        return "\n".join(parts)


def wait_healthy(stack: Stack, services: list[str]) -> None:
    """Run each service's health check until it passes. podman runs health checks on a timer only where
    systemd is PID 1 and podman-compose waits for service_healthy only with podman >= 4.6, so neither
    can be relied on here; `podman healthcheck run` works everywhere."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    pending = list(services)
    while pending:
        for service in list(pending):
            name = stack.container(service)
            state = check(["podman", "inspect", "--format", "{{.State.Status}}", name]).strip()
            assert state == "running", f"{service} is {state}\n{stack.logs()}"
            if run(["podman", "healthcheck", "run", name], timeout=60).returncode == 0:
                pending.remove(service)
        if pending:
            assert time.monotonic() < deadline, f"not healthy after {HEALTH_TIMEOUT}s: {pending}\n{stack.logs()}"
            time.sleep(1)


def remove_leftovers(project: str) -> None:
    """Whatever `down -v` left of this project (only this project's labelled objects and network)."""
    label = f"label=io.podman.compose.project={project}"
    ids = run(["podman", "ps", "-a", "-q", "--filter", label], timeout=60).stdout.split()
    if ids:
        run(["podman", "rm", "-f", "-t", "0", *ids], timeout=120)
    for kind in ("volume", "pod"):
        names = run(["podman", kind, "ls", "-q", "--filter", label], timeout=60).stdout.split()
        if names:
            run(["podman", kind, "rm", "-f", *names], timeout=120)
    network = f"{project}_default"
    if run(["podman", "network", "exists", network], timeout=60).returncode == 0:
        run(["podman", "network", "rm", "-f", network], timeout=60)


# ---- the page: docs/compose.md's command blocks, run as a team runs them --------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str  # "sh" for commands, "" for shown output
    text: str
    line: int  # where it starts in docs/compose.md

    @property
    def first(self) -> str:
        return self.text.splitlines()[0]


def page_blocks() -> list[Block]:
    """The fenced blocks of docs/compose.md that start a line (the indented ones are quoted output)."""
    text = DOC.read_text()
    return [
        Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    ]


def page_block(first_line_start: str) -> Block:
    """The one command block whose text starts so."""
    found = [b for b in page_blocks() if b.lang == "sh" and b.text.startswith(first_line_start)]
    assert len(found) == 1, f"docs/compose.md: {len(found)} command blocks start with {first_line_start!r}"
    return found[0]


def shown_after(block: Block) -> Block:
    """The output block the page shows right after a command block."""
    blocks = page_blocks()
    following = blocks[blocks.index(block) + 1]
    assert following.lang == "", f"docs/compose.md:{block.line}: no output shown after the block"
    return following


# Command blocks of the page and how the tests run them; a new block without an entry fails the last test.
NOT_RUN = {"make wheel                       # dist/pgops": "the wheelhouse fixture runs scripts/build-wheels.sh"}
RUN: set[int] = set()  # lines of the blocks run so far


def commands(block: Block) -> list[str]:
    """The block's commands, one per logical line (continuation lines joined), without comment lines."""
    joined = block.text.replace("\\\n", " ")
    return [c for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")]


def as_run_here(text: str, ports: dict[str, int]) -> str:
    """A command of the page as the test runs it: this checkout's venv and the stack's free ports."""
    venv_bin = str(Path(sys.executable).parent)
    text = text.replace(".venv/bin/", f"{venv_bin}/").replace("make wheel", ":")
    text = text.replace("127.0.0.1:9000", f"127.0.0.1:{ports['S3']}").replace(
        "127.0.0.1:4443", f"127.0.0.1:{ports['GCS']}"
    )
    text = text.replace("127.0.0.1:9090", f"127.0.0.1:{ports['PROM']}")
    return text.replace("-p 15432", f"-p {ports['PG']}")


def run_text(
    text: str, env: dict[str, str], cwd: Path = ROOT, stdin: str = "", timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        env=env,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_block(
    block: Block, env: dict[str, str], ports: dict[str, int], cwd: Path = ROOT, *, terminal: bool = False
) -> str:
    """Run a command block of the page, whole, as bash -e would (on a terminal if asked); its stdout and
    stderr, with \\r\\n as \\n."""
    RUN.add(block.line)
    text = as_run_here(block.text, ports)
    if terminal:
        code, out = on_terminal(["bash", "-euo", "pipefail", "-c", text], env, cwd, timeout=900)
    else:
        result = run_text(text, env, cwd)
        code, out = result.returncode, result.stdout + result.stderr
    out = out.replace("\r\n", "\n")
    assert code == 0, f"docs/compose.md:{block.line} exited {code}:\n{out[-6000:]}"
    return out


def assert_shown(out: str, shown: Block) -> None:
    """Each line the page shows is a whole line of the output, in the page's order; `...` stands for any text."""
    lines = [line.rstrip("\r") for line in out.split("\n")]
    at = 0
    for want in shown.text.splitlines():
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        for i in range(at, len(lines)):
            if pattern.fullmatch(lines[i]):
                at = i + 1
                break
        else:
            raise AssertionError(f"docs/compose.md:{shown.line}: shown line {want!r} is not a line of:\n{out[-6000:]}")


def assert_only_harmless_errors(out: str) -> None:
    """up and down print level=error lines on success: the page says they are about systemd's socket only."""
    errors = [line for line in out.splitlines() if "level=error" in line]
    assert all("/run/systemd/private" in line for line in errors), "\n".join(errors)


@pytest.fixture(scope="module")
def stack(wheelhouse: None, base_image: str) -> Iterator[Stack]:
    """The stack started with the page's own commands, in a shell without PGOPS_BASE_IMAGE (so .env must
    be read) and without a docker-compose.override.yml (the page's override step writes one)."""
    assert not OVERRIDE.exists(), f"{OVERRIDE} of yours would change the stack under test: move it away"
    project = f"pgops-compose-test-{uuid.uuid4().hex[:8]}"
    ports = {"PG": free_port(), "S3": free_port(), "GCS": free_port(), "PROM": free_port()}
    env = {k: v for k, v in podman_env().items() if not k.startswith(("PGOPS_", "COMPOSE_"))}
    env.update({f"PGOPS_COMPOSE_{name}_PORT": str(port) for name, port in ports.items()})
    env["COMPOSE_PROJECT_NAME"] = project
    s = Stack(project, env, ports, started=0.0)
    try:
        up = run_block(page_block("export CONTAINERS_CONF="), env, ports)
        assert_only_harmless_errors(up)
        # Built on the image .env names (its label), not on a registry's Debian (which cannot be pulled here).
        image = check(["podman", "inspect", "--format", "{{.Image}}", s.container("runner")]).strip()
        suite = check(["podman", "image", "inspect", "--format", '{{ index .Labels "pgops.suite" }}', image])
        assert suite.strip() == "bookworm", f"the runner is not built on {base_image}"
        wait_healthy(s, SERVICES)
        s.started = time.time()
        RUN.add(page_block(".venv/bin/podman-compose down -v").line)  # below, when the module is done
        yield s
    finally:
        try:
            assert_only_harmless_errors(run_block(page_block(".venv/bin/podman-compose down -v"), env, ports))
        finally:
            OVERRIDE.unlink(missing_ok=True)
            remove_leftovers(project)


# ---- cron -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CronJob:
    schedule: str
    user: str
    command: str

    @property
    def name(self) -> str:
        """The job's log file name (backup, retention, verify, restore-test)."""
        m = re.search(r">>\s*\S*/([\w-]+)\.log\b", self.command)
        assert m, f"no log file in {self.command!r}"
        return m.group(1)


def cron_file(stack: Stack, service: str) -> tuple[dict[str, str], dict[str, CronJob]]:
    """The variables and the jobs (by name) of the service's /etc/cron.d/pgops."""
    variables: dict[str, str] = {}
    jobs: dict[str, CronJob] = {}
    for raw in stack.output(service, "cat", "/etc/cron.d/pgops").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            key, value = line.split("=", 1)
            variables[key.strip()] = value.strip()
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not a system crontab line: {line!r}"
        job = CronJob(" ".join(fields[:5]), fields[5], fields[6])
        jobs[job.name] = job
    return variables, jobs


def cron_env(stack: Stack, service: str, user: str, variables: dict[str, str]) -> list[str]:
    """`env -i` arguments for the environment cron gives a job: HOME, LOGNAME and the crontab's variables."""
    home = stack.output(service, "getent", "passwd", user).split(":")[5]
    base = {"HOME": home, "LOGNAME": user, "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    return ["env", "-i", *(f"{k}={v}" for k, v in {**base, **variables}.items())]


def run_cron_job(stack: Stack, service: str, name: str) -> None:
    variables, jobs = cron_file(stack, service)
    job = jobs[name]
    argv = [*cron_env(stack, service, job.user, variables), variables.get("SHELL", "/bin/sh"), "-c", job.command]
    result = stack.exec(service, *argv, user=job.user)
    log = stack.exec(service, "tail", "-n", "30", f"/var/log/pgops/{name}.log").stdout
    assert result.returncode == 0, f"{service} job {name} exited {result.returncode}: {result.stderr}\n{log}"


def pgops_json(stack: Stack, service: str, *args: str) -> Any:
    """`pgops ARGS --json` as the backup user with only the env file (cron's environment)."""
    variables, jobs = cron_file(stack, service)
    user = jobs["backup"].user
    argv = [*cron_env(stack, service, user, variables), "/opt/pgops/venv/bin/pgops", *args, "--env-file", ENV_FILE]
    return json.loads(stack.output(service, *argv, "--json", user=user))


# ---- checks shared by the S3 and the GCS runner -------------------------------------------------------


def metrics(stack: Stack, service: str) -> dict[tuple[str, str], float]:
    """(metric name, database) -> value for this target, from the runner's textfile-collector file."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(stack.output(service, "cat", METRICS_FILE)):
        for sample in family.samples:
            # Per-database gauges only (pgops_backup_skipped_replica is per target).
            if sample.labels.get("target") == TARGET and "database" in sample.labels:
                values[(sample.name, sample.labels["database"])] = sample.value
    return values


def good_backups(stack: Stack, service: str) -> dict[str, dict[str, Any]]:
    """The newest backup per database (and @globals) from `pgops list --json`; all must be complete."""
    listed = pgops_json(stack, service, "list")
    backups: dict[str, dict[str, Any]] = {}
    for b in listed["backups"]:
        assert b["status"] == "ok", b
        assert b["target"] == TARGET, b
        database = "@globals" if b["kind"] == "globals" else b["database"]
        backups.setdefault(database, b)
    assert {"demo", "postgres", "@globals"} <= set(backups), sorted(backups)
    assert backups["demo"]["id"] == backups["@globals"]["id"], "globals and the database come from one run"
    return backups


def dump(stack: Stack, database: str) -> str:
    """A plain pg_dump with a fixed \\restrict key (pg_dump 15.18 otherwise writes a random one)."""
    return stack.output("postgres", "pg_dump", "--restrict-key=pgopscomposetest", "--dbname", database, user="postgres")


def restore_and_compare(stack: Stack, service: str, backup: dict[str, Any], target_db: str) -> None:
    result = pgops_json(stack, service, "restore", "--database", "demo", "--id", backup["id"], "--target-db", target_db)
    assert result["database"] == target_db, result
    assert result["backup_id"] == backup["id"], result
    source, restored = dump(stack, "demo"), dump(stack, target_db)
    assert "shop.orders" in source
    assert source == restored, f"{target_db} differs from demo"


def check_jobs_and_metrics(stack: Stack, service: str) -> dict[str, dict[str, Any]]:
    for name in JOB_ORDER:
        run_cron_job(stack, service, name)
    backups = good_backups(stack, service)
    m = metrics(stack, service)
    for db in ("demo", "postgres", "@globals"):
        assert m[("pgops_backup_last_attempt_success", db)] == 1, db
        assert m[("pgops_backup_last_success_timestamp_seconds", db)] >= stack.started - 1, db
        assert m[("pgops_backup_size_bytes", db)] > 0, db
        assert m[("pgops_verify_last_attempt_success", db)] == 1, db
    for db in ("demo", "postgres"):
        assert m[("pgops_restore_test_last_success_timestamp_seconds", db)] >= stack.started - 1, db
    assert m[("pgops_retention_kept_backups", "demo")] >= 1
    return backups


# ---- the tests --------------------------------------------------------------------------------------------


def test_runner_is_laid_out_like_the_role(stack: Stack) -> None:
    for service in ("runner", "runner-gcs"):
        assert stack.output(service, "stat", "-c", "%a %U", ENV_FILE).split() == ["600", "postgres"]
        env_file = stack.output(service, "cat", ENV_FILE)
        assert "PGOPS_PG_PASSWORD=" in env_file
        assert stack.output(service, "stat", "-c", "%a %U", "/etc/cron.d/pgops").split() == ["644", "root"]
        for directory in ("/var/lib/pgops/metrics", "/var/lib/pgops/lock", "/var/log/pgops"):
            assert stack.output(service, "stat", "-c", "%U", directory).strip() == "postgres", directory
        stack.output(service, "sh", "-c", 'kill -0 "$(cat /run/crond.pid)"')  # cron itself is running
        # What the role runs on converge: settings, store writable, server reachable, pg_dump usable.
        variables, _ = cron_file(stack, service)
        check_argv = [*cron_env(stack, service, "postgres", variables), "/opt/pgops/venv/bin/pgops", "check"]
        stack.output(service, *check_argv, "--env-file", ENV_FILE, user="postgres")
        variables, jobs = cron_file(stack, service)
        assert variables == {"SHELL": "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin"}
        assert sorted(jobs) == sorted(JOB_ORDER)
        assert jobs["backup"] == CronJob(
            "0 2 * * *",
            "postgres",
            f"/opt/pgops/venv/bin/pgops backup --env-file {ENV_FILE} >>/var/log/pgops/backup.log 2>&1",
        )
        assert jobs["restore-test"].command.startswith("/opt/pgops/venv/bin/pgops verify --restore-test --env-file")


def test_page_back_up_look_restore(stack: Stack) -> None:
    """docs/compose.md "Back up, look, restore", in its order, on the fresh stack. On the pseudo-terminal
    `compose exec` gives, the backup shows its progress meter, and every log line still starts a line of
    its own (the meter used to run into the next log line: `backup 933 Bts=... event=backup_done`)."""
    now = page_block("# a backup now")
    out = run_block(now, stack.env, stack.ports, terminal=True)
    assert "\rbackup " in out, "no progress meter: `compose exec` should give pgops a terminal"
    assert_shown(out, shown_after(now))

    out = run_block(page_block(".venv/bin/podman-compose exec -T -u postgres runner env -i"), stack.env, stack.ports)
    assert "event=run_done" in out and "pgops_backup_last_attempt_success" in out, out[-3000:]

    restore = page_block(".venv/bin/podman-compose exec -u postgres runner /opt/pgops/venv/bin/pgops restore")
    out = run_block(restore, stack.env, stack.ports)
    assert "event=restore_done database=demo" in out and "into=demo_copy" in out, out[-3000:]
    assert_shown(out, shown_after(restore))
    assert dump(stack, "demo") == dump(stack, "demo_copy")

    out = run_block(page_block('.venv/bin/python -c "import boto3'), stack.env, stack.ports)
    assert f"'{PREFIX}/{TARGET}/demo/" in out, out[-3000:]
    listing, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])
    names = [item["name"] for item in listing["items"]]
    assert any(name.startswith(f"{PREFIX}/{TARGET}/demo/") for name in names), names


def prometheus_api(stack: Stack, path: str, **params: str) -> Any:
    """GET Prometheus's HTTP API through the port the stack publishes on the host; its `data`."""
    url = f"http://127.0.0.1:{stack.ports['PROM']}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def test_page_prometheus_shows_postgres_and_the_backup(stack: Stack) -> None:
    """docs/compose.md "Watch it in Prometheus": after the page's backup, the real Prometheus of the stack has
    pg_up == 1 from postgres_exporter and each database's pgops_backup_last_attempt_success == 1 from the
    runner's pgops.prom (through its node_exporter), and it has loaded the repository's alert rules, with the
    PostgreSQL-down alert among them and not firing."""
    block = page_block("# wait until Prometheus has scraped PostgreSQL and the runner's metrics")
    out = run_block(block, stack.env, stack.ports)
    assert_shown(out, shown_after(block))
    # The same through the host's published port, as a browser or a Grafana would read it.
    up = prometheus_api(stack, "query", query="pg_up")["result"]
    assert [(r["metric"]["job"], r["value"][1]) for r in up] == [("postgres", "1")], up
    # The exporter's login has pg_monitor and nothing else.
    roles = stack.output(
        "postgres",
        *("psql", "-XAtc"),
        "SELECT r.rolsuper, r.rolcreaterole, r.rolcreatedb, string_agg(m.rolname, ',') FROM pg_roles r"
        " JOIN pg_auth_members a ON a.member = r.oid JOIN pg_roles m ON m.oid = a.roleid"
        " WHERE r.rolname = 'postgres_exporter' GROUP BY 1, 2, 3",
        user="postgres",
    )
    assert roles.strip() == "f|f|f|pg_monitor", roles
    rules = [r for g in prometheus_api(stack, "rules")["groups"] for r in g["rules"] if r["type"] == "alerting"]
    names = {r["name"] for r in rules}
    assert "PostgresDown" in names and len(names) >= 10, names
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    firing = {a["labels"]["alertname"] for a in prometheus_api(stack, "alerts")["alerts"] if a["state"] == "firing"}
    assert "PostgresDown" not in firing and "PgopsBackupFailing" not in firing, firing


def test_page_scheduled_backup_every_minute_backs_up_restored_databases_too(stack: Stack) -> None:
    """docs/compose.md "See a scheduled backup": its override makes cron (not a hand-run command) take a
    backup within the minute, and that backup includes demo_copy, the database restored above. Then the
    page's clean-up drops the copy and puts the 02:00 schedule back."""
    block = page_block("cat >docker-compose.override.yml <<'EOF'")
    since = dt.datetime.now(dt.UTC)
    out = run_block(block, stack.env, stack.ports)
    assert_shown(out, shown_after(block))
    _, jobs = cron_file(stack, "runner")
    assert jobs["backup"].schedule == "* * * * *"
    listed = pgops_json(stack, "runner", "list")["backups"]
    scheduled = {b["database"] for b in listed if b["reason"] == "scheduled" and b["started_at"] >= iso(since)}
    assert {"demo", "demo_copy", "postgres"} <= scheduled, scheduled
    log = stack.output("runner", "cat", "/var/log/pgops/backup.log")
    assert "event=backup_done database=demo_copy" in log

    run_block(
        page_block("PGPASSWORD=pgops-compose-demo psql -h 127.0.0.1 -p 15432 -U postgres -d postgres"),
        stack.env,
        stack.ports,
    )
    assert not OVERRIDE.exists()
    assert "demo_copy" not in stack.output(
        "postgres", "psql", "-XAtc", "SELECT datname FROM pg_database", user="postgres"
    )
    _, jobs = cron_file(stack, "runner")
    assert jobs["backup"].schedule == "0 2 * * *"
    wait_healthy(stack, ["runner"])


def test_s3_runner_backs_up_verifies_and_restores(stack: Stack) -> None:
    import boto3

    backups = check_jobs_and_metrics(stack, "runner")
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.ports['S3']}",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
        region_name="us-east-1",
    )
    for db in ("demo", "@globals"):
        manifest_key = f"{PREFIX}/{backups[db]['key']}"
        assert s3.head_object(Bucket=BUCKET, Key=manifest_key)["ContentLength"] > 0
        for obj in backups[db]["objects"]:
            assert obj["key"].startswith(f"{TARGET}/{db}/{backups[db]['id']}/"), obj
            body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{obj['key']}")["Body"].read()
            assert len(body) == obj["size"], obj
            assert hashlib.sha256(body).hexdigest() == obj["sha256"], obj
    restore_and_compare(stack, "runner", backups["demo"], "demo_restored_s3")


def test_gcs_runner_backs_up_verifies_and_restores(stack: Stack) -> None:
    backups = check_jobs_and_metrics(stack, "runner-gcs")
    endpoint = f"http://127.0.0.1:{stack.ports['GCS']}"
    names = gcs_object_names(endpoint, BUCKET, f"{PREFIX}/{TARGET}/")
    for db in ("demo", "@globals"):
        assert f"{PREFIX}/{backups[db]['key']}" in names
        for obj in backups[db]["objects"]:
            status, meta = gcs_api(endpoint, "GET", f"/storage/v1/b/{BUCKET}/o/{gcs_quote(PREFIX + '/' + obj['key'])}")
            assert status == 200, (status, meta)
            assert int(meta["size"]) == obj["size"], (meta, obj)
            body = gcs_get_object(endpoint, BUCKET, f"{PREFIX}/{obj['key']}")
            assert hashlib.sha256(body).hexdigest() == obj["sha256"], obj
    restore_and_compare(stack, "runner-gcs", backups["demo"], "demo_restored_gcs")


def build_context_copy(dest: Path) -> None:
    """This checkout as a team has it: every file git tracks or would track (not the ignored ones), and the
    wheelhouse (ignored by git, but what the images install)."""
    listed = check(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-p", str(src), str(dest / name)], check=True)
    subprocess.run(["cp", "-a", str(ROOT / "dist"), str(dest / "dist")], check=True)


# Secrets a team keeps next to the bundle's files: none of them may reach a build context or an image.
PLANTED = [
    "inventory/prod/group_vars/x/vault.yml",  # a team's inventory copied into inventory/, with its vault
    "inventory/prod/hosts.yml",
    "inventory/example/production/group_vars/all/vault.yml",  # a vault file even inside the example
    "inventory/example/production/deploy.key",
    "inventory/example/production/.ssh/id_ed25519",
    "roles/postgresql/files/server.pem",
    "playbooks/.env",
    ".env.local",
    "compose/.vault_pass",
]


def test_bundle_context_and_image_keep_a_teams_inventory_and_secrets_out(
    wheelhouse: None, base_image: str, tmp_path: Path
) -> None:
    """A copy of this checkout with a team's inventory (and a vault file, keys, an env file) planted in it:
    the build context .dockerignore lets through holds only inventory/example's placeholders, and the bundle
    image built from that copy has no planted file and no byte of the planted secret."""
    ctx = tmp_path / "checkout"
    build_context_copy(ctx)
    secret = f"pgops-planted-secret-{uuid.uuid4().hex}"
    for name in PLANTED:
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(f"planted: {secret}\n")
    (ctx / ".env").write_text((ROOT / ".env").read_text() + f"PGOPS_S3_SECRET_ACCESS_KEY={secret}\n")

    # What the context holds: an image that copies all of it.
    probe = tmp_path / "probe.Containerfile"
    probe.write_text(f"FROM {base_image}\nCOPY . /context\n")
    tag = f"localhost/pgops-context-probe:{uuid.uuid4().hex[:8]}"
    bundle = f"localhost/pgops-bundle-probe:{uuid.uuid4().hex[:8]}"
    try:
        check(["podman", "build", "-q", "-f", str(probe), "-t", tag, str(ctx)], timeout=300)
        files = check(["podman", "run", "--rm", "--entrypoint", "find", tag, "/context", "-type", "f"]).split()
        in_context = {f.removeprefix("/context/") for f in files}
        assert in_context, "empty build context"
        leaked = sorted({*PLANTED, ".env"} & in_context)
        assert not leaked, f"in the build context: {leaked}"
        inventories = {f.split("/")[1] for f in in_context if f.startswith("inventory/")}
        assert inventories == {"example"}, inventories
        assert "inventory/example/production/hosts.yml" in in_context
        assert not [f for f in in_context if "vault" in f], "a vault file is in the build context"
        grep = run(["podman", "run", "--rm", "--entrypoint", "grep", tag, "-rl", secret, "/context"])
        assert grep.returncode == 1, f"the planted secret is in the build context: {grep.stdout}"

        # The bundle image itself, built from that copy.
        check(["podman", "build", "-q", "--build-arg", f"BASE_IMAGE={base_image}", "-t", bundle, str(ctx)], timeout=900)
        listing = check(["podman", "run", "--rm", bundle, "find", "/opt/pgops-bundle/inventory", "-type", "f"])
        assert {line.split("/")[4] for line in listing.split()} == {"example"}, listing
        for where in ("/opt", "/home", "/etc", "/tmp", "/root"):
            grep = run(["podman", "run", "--rm", "--user", "0", "--entrypoint", "grep", bundle, "-rl", secret, where])
            assert grep.returncode == 1, f"the planted secret is in the image under {where}: {grep.stdout}"
    finally:
        run(["podman", "rmi", "-f", tag, bundle], timeout=120)


PAGE_PORTS = {"PG": 15432, "S3": 9000, "GCS": 4443, "PROM": 9090}  # for the page's commands that use no port


@pytest.fixture(scope="module")
def bundle_image(wheelhouse: None, base_image: str) -> str:
    """The root Dockerfile, built with the page's command (as `pgops-bundle`)."""
    run_block(page_block("make wheel\npodman build"), podman_env(), PAGE_PORTS)
    return BUNDLE_IMAGE


def test_bundle_image_runs_ansible_with_the_collections_and_pgops(stack: Stack, bundle_image: str) -> None:
    """The bundle image, used on the stack's network."""
    shell = ["podman", "run", "--rm", BUNDLE_IMAGE, "bash", "-c"]
    assert check([*shell, "id -un; id -u"]).split() == ["ansible", "1000"]
    assert check(["podman", "run", "--rm", BUNDLE_IMAGE, "--version"]).startswith("ansible-playbook [core 2.19.")
    collections = check([*shell, "ansible-galaxy collection list 2>/dev/null"])
    for name in ("community.postgresql", "community.crypto", "community.general", "containers.podman"):
        assert re.search(rf"^{re.escape(name)}\s+\d", collections, re.MULTILINE), name
    assert check(["podman", "run", "--rm", BUNDLE_IMAGE, "pgops", "--version"]).startswith("pgops ")
    assert "OpenSSH" in run([*shell, "ssh -V"]).stderr
    playbooks = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
    assert playbooks, "no playbooks in the image"
    for playbook in playbooks:
        check(["podman", "run", "--rm", BUNDLE_IMAGE, "--syntax-check", "-i", "localhost,", f"playbooks/{playbook}"])
    # A module from a bundled collection, run from the image on the stack's network against its server.
    network = f"{stack.project}_default"
    ping = check(
        [
            *("podman", "run", "--rm", "--network", network, BUNDLE_IMAGE, "ansible", "all"),
            *("-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=/opt/ansible/bin/python"),
            *("-m", "community.postgresql.postgresql_ping"),
            *("-a", f"login_host=postgres login_user=postgres login_password={PG_PASSWORD} login_db=demo"),
        ]
    )
    assert '"is_available": true' in ping, ping


@contextlib.contextmanager
def ssh_host(base_image: str, public_key: str) -> Iterator[tuple[str, str]]:
    """A throwaway host with sshd (a systemd container of the base image) that takes `public_key` for root,
    on podman's default network: its address and its ed25519 host key."""
    name = f"pgops-compose-test-ssh-{uuid.uuid4().hex[:8]}"
    check(["podman", "run", "-d", "--name", name, "--systemd=always", base_image, "/sbin/init"])
    try:
        install = (
            "mkdir -p -m 700 /root/.ssh && cat >/root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys"
        )
        result = subprocess.run(
            ["podman", "exec", "-i", name, "sh", "-c", install],
            input=public_key,
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + 60
        while run(["podman", "exec", name, "systemctl", "is-active", "-q", "ssh"]).returncode != 0:
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(1)
        address = check(["podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name]).strip()
        assert address, f"{name} has no address on podman's default network"
        host_key = check(["podman", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).split()
        yield address, f"{host_key[0]} {host_key[1]}"
    finally:
        run(["podman", "rm", "-f", "-t", "0", name], timeout=120)


def test_bundle_run_commands_of_the_page_reach_a_host_with_a_key_only_root_can_read(
    bundle_image: str, base_image: str, tmp_path: Path
) -> None:
    """The page's `podman run` lines, as written, from a team's directory (its inventory/production) with
    ~/.ssh holding a deploy key of mode 0600 owned by root and the host's known_hosts entry: uid 1000 in
    the container could not read that key before, and the command failed."""
    block = page_block("podman run --rm -it -v ~/.ssh:/run/pgops/ssh:ro")
    RUN.add(block.line)
    home, team = tmp_path / "home", tmp_path / "team"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key = ssh_dir / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgops-compose-test", "-f", str(key)], check=True
    )
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == os.geteuid()
    inventory = team / "inventory" / "production"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    with ssh_host(base_image, key.with_suffix(".pub").read_text()) as (address, host_key):
        (ssh_dir / "known_hosts").write_text(f"{address} {host_key}\n")
        (inventory / "hosts.yml").write_text(
            "all:\n  children:\n    pgops_postgres:\n      children:\n        pgops_db:\n          hosts:\n"
            f"            db-test-1:\n              ansible_host: {address}\n"
        )
        (inventory / "group_vars" / "all" / "main.yml").write_text("ansible_user: root\n")
        env = {**podman_env(), "HOME": str(home)}
        ping, converge, shell = commands(block)
        assert "ansible.builtin.ping" in ping and "playbooks/site.yml" in converge and shell.endswith("user ansible")

        result = run_text(ping, env, cwd=team, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r'db-test-1 \| SUCCESS => \{.*"ping": "pong"', result.stdout, re.DOTALL), result.stdout

        vault = {"Vault password: ": "not-a-real-vault-password\n"}
        code, out = on_terminal(["bash", "-c", f"{converge} --list-hosts"], env, team, answers=vault)
        assert code == 0, out
        assert re.search(r"hosts \(1\):\s+db-test-1", out), out

    # No SSH needed, no ~/.ssh needed: this machine's real HOME (the test machine has no /root/.ssh).
    code, out = on_terminal(["bash", "-c", shell], podman_env(), team, answers={"$ ": "id -un; exit\n"})
    assert code == 0, out
    assert "ansible" in out.split(), out


def test_every_command_block_of_the_page_is_run() -> None:
    """Runs last: each command block of docs/compose.md was run by a test above, or is listed in NOT_RUN."""
    blocks = [b for b in page_blocks() if b.lang == "sh"]
    missing = [
        f"docs/compose.md:{b.line}: {b.first}"
        for b in blocks
        if b.line not in RUN and not any(b.text.startswith(k) for k in NOT_RUN)
    ]
    assert not missing, "command blocks no test runs:\n" + "\n".join(missing)
