"""The local stack (docker-compose.yml) under real podman-compose, and the bundle image (Dockerfile).

One stack per module, under a unique project name, built on the local Debian 12 image: PostgreSQL with
the demo database, the S3 and GCS emulators and two runners. Each runner's jobs run exactly as its
/etc/cron.d/pgops has them: the command line, the user and cron's minimal environment (no PGOPS_*
variables from the container), so the env file alone has to carry the settings. Then the backups must be
listed as good, be in the emulators byte for byte (read from the host through the published loopback
ports), show in the metrics file, and restore into a database that dumps identically to the source.
The stack is torn down with its volumes whatever happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.objstore import gcs_api, gcs_get_object, gcs_object_names, gcs_quote
from tests.fixtures.pg import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "molecule" / "containers.conf"
BASE_IMAGE = "localhost/pgops-debian:12"
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
BUNDLE_IMAGE = "localhost/pgops-bundle:test"
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
        check([str(ROOT / "scripts" / "build-wheels.sh")])


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
        for service in ("postgres", "s3", "gcs", "runner", "runner-gcs"):
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


@pytest.fixture(scope="module")
def stack(wheelhouse: None, base_image: str) -> Iterator[Stack]:
    project = f"pgops-compose-test-{uuid.uuid4().hex[:8]}"
    ports = {"PG": free_port(), "S3": free_port(), "GCS": free_port()}
    env = {
        **podman_env(),
        "PGOPS_BASE_IMAGE": base_image,
        **{f"PGOPS_COMPOSE_{name}_PORT": str(port) for name, port in ports.items()},
    }
    s = Stack(project, env, ports, started=0.0)
    try:
        s.compose("build")
        s.compose("up", "-d")
        wait_healthy(s, ["postgres", "s3", "gcs", "runner", "runner-gcs"])
        s.started = time.time()
        yield s
    finally:
        try:
            run([PODMAN_COMPOSE, "-p", project, "down", "-v", "-t", "10"], env, timeout=300)
        finally:
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
            if sample.labels.get("target") == TARGET:
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


def test_bundle_image_runs_ansible_with_the_collections_and_pgops(stack: Stack) -> None:
    """The root Dockerfile: build it, then use it on the stack's network like a team would use it."""
    check(["podman", "build", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", BUNDLE_IMAGE, str(ROOT)], timeout=900)
    shell = ["podman", "run", "--rm", "--entrypoint", "bash", BUNDLE_IMAGE, "-c"]
    assert check([*shell, "id -u"]).strip() != "0"
    assert check(["podman", "run", "--rm", BUNDLE_IMAGE, "--version"]).startswith("ansible-playbook [core 2.19.")
    collections = check([*shell, "ansible-galaxy collection list 2>/dev/null"])
    for name in ("community.postgresql", "community.crypto", "community.general", "containers.podman"):
        assert re.search(rf"^{re.escape(name)}\s+\d", collections, re.MULTILINE), name
    assert check([*shell, "pgops --version"]).startswith("pgops ")
    assert "OpenSSH" in run([*shell, "ssh -V"]).stderr
    playbooks = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
    assert playbooks, "no playbooks in the image"
    for playbook in playbooks:
        check([*shell, f"ansible-playbook --syntax-check -i localhost, playbooks/{playbook}"])
    # A module from a bundled collection, run from the image on the stack's network against its server.
    network = f"{stack.project}_default"
    ping = check(
        [
            *("podman", "run", "--rm", "--network", network, "--entrypoint", "ansible", BUNDLE_IMAGE, "all"),
            *("-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=/opt/ansible/bin/python"),
            *("-m", "community.postgresql.postgresql_ping"),
            *("-a", f"login_host=postgres login_user=postgres login_password={PG_PASSWORD} login_db=demo"),
        ]
    )
    assert '"is_available": true' in ping, ping
