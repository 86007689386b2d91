"""Verify roles/postgresql from inside each instance and over TCP from the other one (RELIABILITY 23-28)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from conftest import SIDE, VARS, Instance, psql_local, psql_tcp

PASSWORDS: dict[str, str] = VARS["pgops_test_passwords"]


def test_service_running(host: Any, inst: Instance) -> None:
    service = host.service(f"postgresql@{inst.major}-main")
    assert service.is_running
    assert psql_local(host, "SELECT current_setting('server_version_num')::int / 10000") == str(inst.major)


def test_cluster_created_with_checksums_locale_and_data_dir(host: Any, inst: Instance) -> None:
    assert psql_local(host, "SHOW data_checksums") == "on"
    assert psql_local(host, "SHOW data_directory") == inst.data_dir
    assert (
        psql_local(
            host,
            "SELECT datcollate || ' ' || pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'template1'",
        )
        == "C.UTF-8 UTF8"
    )


def test_file_modes(host: Any, inst: Instance) -> None:
    data = host.file(inst.data_dir)
    assert (data.mode, data.user) == (0o700, "postgres")
    key = host.file(f"{inst.conf_dir}/tls/server.key")
    assert (key.mode, key.user) == (0o600, "postgres")
    ca_key = host.file(f"{inst.conf_dir}/tls/ca.key")
    assert (ca_key.mode, ca_key.user) == (0o600, "root")


def test_config_layout(host: Any, inst: Instance) -> None:
    conf = host.file(f"{inst.conf_dir}/postgresql.conf").content_string
    assert re.search(r"^include_dir = 'conf\.d'$", conf, re.M)
    for name in ["10-pgops-server", "20-pgops-tuning", "30-pgops-tls", "40-pgops-logging", "90-pgops-settings"]:
        assert host.file(f"{inst.conf_dir}/conf.d/{name}.conf").content_string.startswith("# Ansible managed")
    hba = host.file(f"{inst.conf_dir}/pg_hba.conf").content_string
    assert hba.startswith("# Ansible managed")
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules[0][:4] == ["local", "all", "postgres", "peer"]
    assert rules[-1] == ["hostnossl", "all", "all", "::/0", "reject"]
    assert not any("trust" in r for r in rules)
    # No errors in what the server would read now.
    assert psql_local(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    assert psql_local(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    assert psql_local(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_validator_left_nothing_behind(host: Any, inst: Instance) -> None:
    """pgops-validate judged every candidate (the bad ones of side_effect.yml too) in a private scratch
    directory that it removed, and never wrote next to the live files (RELIABILITY 25, 36)."""
    assert host.check_output("find /tmp /var/tmp -maxdepth 1 -name 'pgops-validate.*'") == ""
    assert host.check_output(f"find {inst.conf_dir} -name '.*'") == ""
    assert host.file("/usr/local/libexec/pgops/pgops-validate").mode == 0o755


def test_listens_only_where_configured(host: Any, inst: Instance) -> None:
    listeners = {line.split()[3] for line in host.check_output("ss -Hltn 'sport = :5432'").splitlines()}
    assert f"{inst.ip}:5432" in listeners
    assert "127.0.0.1:5432" in listeners
    assert not listeners & {"0.0.0.0:5432", "*:5432", "[::]:5432"}, listeners


def test_tls_negotiated_over_tcp(host: Any, peer: Any, inst: Instance) -> None:
    ca = host.file(f"{inst.conf_dir}/tls/ca.crt").content_string
    peer.run("cat > /tmp/pgops-peer-ca.crt <<'EOF'\n" + ca + "EOF")
    out = peer.run(
        f"openssl s_client -starttls postgres -connect {inst.ip}:5432 -CAfile /tmp/pgops-peer-ca.crt "
        f"-verify_return_error -verify_ip {inst.ip} -brief </dev/null"
    )
    assert out.rc == 0, out.stderr
    assert re.search(r"Protocol version: TLSv1\.[23]", out.stderr + out.stdout)
    assert "Verification: OK" in out.stderr + out.stdout
    # TLS 1.1 is refused (the server's minimum is TLS 1.2).
    old = peer.run(
        f"openssl s_client -starttls postgres -connect {inst.ip}:5432 -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0' </dev/null"
    )
    assert old.rc != 0
    assert psql_local(host, "SHOW ssl") == "on"
    assert psql_local(host, "SHOW ssl_min_protocol_version") == "TLSv1.2"


def test_tls_inside_with_full_verification(host: Any, inst: Instance) -> None:
    res = psql_tcp(
        host,
        "localhost",
        "app_ro",
        PASSWORDS["app_ro"],
        "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        sslmode="verify-full",
        extra=f"sslrootcert={inst.conf_dir}/tls/ca.crt",
    )
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() in {"TLSv1.2", "TLSv1.3"}


def test_non_tls_remote_login_refused(peer: Any, inst: Instance) -> None:
    res = psql_tcp(peer, inst.ip, "app_ro", PASSWORDS["app_ro"], "SELECT 1", sslmode="disable")
    assert res.rc != 0
    assert "no encryption" in res.stderr


def test_scram_login_over_tcp(peer: Any, inst: Instance) -> None:
    ok = psql_tcp(
        peer,
        inst.ip,
        "app_ro",
        PASSWORDS["app_ro"],
        "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    assert ok.rc == 0, ok.stderr
    assert ok.stdout.strip() == "app_ro true"
    bad = psql_tcp(peer, inst.ip, "app_ro", "not-the-password", "SELECT 1")
    assert bad.rc != 0
    assert 'password authentication failed for user "app_ro"' in bad.stderr


def test_passwords_are_scram_only(host: Any) -> None:
    assert psql_local(host, "SHOW password_encryption") == "scram-sha-256"
    weak = psql_local(
        host,
        "SELECT string_agg(rolname, ',') FROM pg_authid WHERE rolcanlogin AND "
        "(rolpassword LIKE 'md5%' OR (rolpassword IS NULL AND rolname <> 'postgres'))",
    )
    assert weak == ""
    scram = psql_local(host, "SELECT string_agg(rolname, ',') FROM pg_authid WHERE rolpassword LIKE 'SCRAM-SHA-256$%'")
    assert set(PASSWORDS) <= set(scram.split(","))


def test_roles_attributes_and_membership(host: Any) -> None:
    assert psql_local(host, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'analysts'") == "f"
    assert psql_local(host, "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'alice'") == "t"
    assert psql_local(host, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app_ro'") == "10"
    assert psql_local(host, "SELECT pg_has_role('alice', 'analysts', 'MEMBER')") == "t"


def test_presets_and_default_privileges(host: Any, peer: Any, inst: Instance) -> None:
    # The owner creates a table after the grants ran: only default privileges can let the others in.
    owner = psql_tcp(
        host,
        "127.0.0.1",
        "app_owner",
        PASSWORDS["app_owner"],
        "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text); INSERT INTO items (name) VALUES ('a')",
    )
    assert owner.rc == 0, owner.stderr
    rw = psql_tcp(
        peer,
        inst.ip,
        "app_rw",
        PASSWORDS["app_rw"],
        "INSERT INTO items (name) VALUES ('b'); SELECT count(*) > 0 FROM items",
    )
    assert rw.rc == 0, rw.stderr
    ro_read = psql_tcp(peer, inst.ip, "app_ro", PASSWORDS["app_ro"], "SELECT count(*) > 0 FROM items")
    assert ro_read.rc == 0 and ro_read.stdout.strip() == "t", ro_read.stderr
    ro_write = psql_tcp(peer, inst.ip, "app_ro", PASSWORDS["app_ro"], "INSERT INTO items (name) VALUES ('c')")
    assert ro_write.rc != 0
    assert "permission denied" in ro_write.stderr
    ro_ddl = psql_tcp(peer, inst.ip, "app_ro", PASSWORDS["app_ro"], "CREATE TABLE sneaky (id int)")
    assert ro_ddl.rc != 0 and "permission denied for schema public" in ro_ddl.stderr


def test_database_hardening(host: Any) -> None:
    assert psql_local(host, "SELECT has_schema_privilege('public', 'public', 'CREATE')", db="appdb") == "f"
    assert psql_local(host, "SELECT has_database_privilege('public', 'appdb', 'CONNECT')") == "f"
    assert psql_local(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb'") == "app_owner"
    # alice has no preset on appdb and PUBLIC lost CONNECT there.
    res = psql_tcp(host, "127.0.0.1", "alice", PASSWORDS["alice"], "SELECT 1")
    assert res.rc != 0 and "permission denied for database" in res.stderr


def test_extensions_present(host: Any) -> None:
    exts = set(psql_local(host, "SELECT string_agg(extname, ',') FROM pg_extension", db="appdb").split(","))
    assert {"uuid-ossp", "pgcrypto", "pg_stat_statements"} <= exts
    assert "pg_stat_statements" in psql_local(host, "SHOW shared_preload_libraries")
    # Works only when the library was preloaded (the restart happened).
    assert psql_local(host, "SELECT count(*) >= 0 FROM pg_stat_statements", db="appdb") == "t"
    assert len(psql_local(host, "SELECT uuid_generate_v4()::text", db="appdb")) == 36
    assert psql_local(host, "SELECT length(gen_random_bytes(16))", db="appdb") == "16"


def test_logging_settings(host: Any) -> None:
    got = psql_local(
        host,
        "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN "
        "('log_connections', 'log_disconnections', 'log_statement', 'log_min_duration_statement')",
    )
    assert got == "log_connections=on log_disconnections=on log_min_duration_statement=1000 log_statement=ddl"
    assert psql_local(host, "SHOW log_line_prefix") == "%m [%p] %q%u@%d"


# ------------------------------------------------------------------------------------------------ tuning
# workload=mixed: max_connections, shared_buffers divisor, effective_cache_size fraction, maintenance_work_mem
# divisor, work_mem divisor, min/max_wal_size in MB.
MAX_CONNECTIONS, SB_DIV, ECS_NUM, ECS_DIV, MWM_DIV, WM_DIV, MIN_WAL_MB, MAX_WAL_MB = 100, 4, 3, 4, 16, 2, 1024, 4096


def expected_tuning(mem_mb: int, cpus: int) -> dict[str, float]:
    """The README's formula for workload=mixed, storage=ssd, re-derived here independently (memory in kB)."""
    sb = mem_mb // SB_DIV
    per_gather = max(1, min(4, cpus // 2))
    work_mem = ((mem_mb - sb) * 1024) // (MAX_CONNECTIONS * 3) // per_gather // WM_DIV
    return {
        "max_connections": MAX_CONNECTIONS,
        "shared_buffers": sb * 1024,
        "effective_cache_size": mem_mb * ECS_NUM // ECS_DIV * 1024,
        "maintenance_work_mem": min(2048, mem_mb // MWM_DIV) * 1024,
        "work_mem": max(64, work_mem),
        "wal_buffers": min(16384, max(64, sb * 1024 * 3 // 100)),
        "min_wal_size": MIN_WAL_MB * 1024,
        "max_wal_size": MAX_WAL_MB * 1024,
        "checkpoint_completion_target": 0.9,
        "random_page_cost": 1.1,
        "effective_io_concurrency": 200,
        "max_worker_processes": max(8, cpus),
        "max_parallel_workers": cpus,
        "max_parallel_workers_per_gather": per_gather,
        "max_parallel_maintenance_workers": per_gather,
    }


def container_resources(host: Any) -> tuple[int, int]:
    mem_mb = int(host.check_output("awk '/^MemTotal:/ {print $2}' /proc/meminfo")) // 1024
    limit = host.run(
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    ).stdout.strip()
    if limit.isdigit():
        mem_mb = min(mem_mb, int(limit) // 1048576)
    cpus = int(host.check_output("grep -c ^processor /proc/cpuinfo"))
    quota = host.run(
        'cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) '
        '$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"'
    ).stdout.split()
    if quota and quota[0].lstrip("-").isdigit() and int(quota[0]) > 0:
        cpus = min(cpus, -(-int(quota[0]) // int(quota[1])))
    return mem_mb, cpus


def to_kb(setting: str, unit: str | None) -> float:
    factor = {"8kB": 8, "kB": 1, "MB": 1024, None: 1, "": 1}[unit]
    return float(setting) * factor


def test_tuning_matches_formula(host: Any, inst: Instance) -> None:
    mem_mb, cpus = container_resources(host)
    if inst.name == "pgops-pg-d13":  # started with --memory=2g --cpus=1: the cgroup limits must win
        assert (mem_mb, cpus) == (2048, 1)
    want = expected_tuning(mem_mb, cpus)
    # side_effect.yml overrode shared_buffers through postgresql_settings: every tuned value is overridable.
    want["shared_buffers"] = int(SIDE["side_effect_settings"]["shared_buffers"].removesuffix("MB")) * 1024
    rows = psql_local(host, "SELECT name, setting, coalesce(unit, '') FROM pg_settings").splitlines()
    got = {name: to_kb(setting, unit) for name, setting, unit in (r.split("|") for r in rows) if name in want}
    assert got == pytest.approx({k: float(v) for k, v in want.items()})
