"""pgops benchmark: pgops backup/restore side by side with pg_dump, gzip, zstd and pgBackRest, in ONE run.

    make bench BENCH_ARGS="--scale 50 --repeat 3 --rss-scales 10,100"

Starts a throwaway PostgreSQL 15 cluster, builds a pgbench database plus a table of mixed-entropy rows of
about the same size, runs every variant --repeat times (interleaved, so machine noise hits all of them
alike), then prints a markdown table with the target verdicts and writes bench/results/<time>.json.
Everything lives in one temp directory that is removed at the end, also on failure or Ctrl-C.
See bench/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import pooling, report, wal  # noqa: E402
from bench.cluster import BINDIR, BenchCluster, PgBackRest, as_postgres, free_port, make_dataset  # noqa: E402
from bench.measure import CommandFailed, Sample, run_measured  # noqa: E402
from bench.objstore import FakeGcsServer, MotoServer  # noqa: E402

PGOPS = [sys.executable, "-m", "pgops"]
DB = "bench"
BUCKET = "pgops-bench"
BACKUP_DONE = re.compile(r"event=backup_done database=(\S+) id=\S+ bytes=(\d+)(?: raw_bytes=(\d+))?")
ZSTD_LEVELS = (1, 3, 6, 9)
I4_IMPORTS = (  # what a gs:// age-encrypted backup loads before it moves a byte (the RSS baseline)
    "import pgops.cli, pgops.backup, pgops.crypto, pgops.storage.gcs, pyrage, zstandard, "
    "google.auth.transport.requests, google.cloud.storage"
)


class Bench:
    def __init__(self, root: Path, cluster: BenchCluster, moto: MotoServer, pgbr: PgBackRest) -> None:
        self.root, self.cluster, self.moto, self.pgbr = root, cluster, moto, pgbr
        self.files, self.stores, self.spool, self.logs = (root / d for d in ("files", "stores", "spool", "logs"))
        for d in (self.files, self.stores, self.spool, self.logs, root / "lock"):
            d.mkdir(parents=True, exist_ok=True)
        self.env_file = root / "empty.env"
        self.env_file.write_text("")
        self.samples: list[Sample] = []
        self.run_no = 0
        self.expected_rows: dict[str, int] = {}
        self.dataset: dict[str, Any] = {}
        self.failures: list[dict[str, Any]] = []
        self.gcs: FakeGcsServer | None = None  # only with --issue4
        self.age_recipient = ""
        self.age_identity: Path | None = None

    # --- plumbing ------------------------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """The caller's environment without any PG*, PGOPS_*, AWS_* or Google variable, no ~/.aws, no gcloud."""
        drop = ("PG", "AWS_", "GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR_HOST", "GCLOUD_PROJECT")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            AWS_CONFIG_FILE=str(self.root / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.root / "no-aws-credentials"),
            AWS_EC2_METADATA_DISABLED="true",
            CLOUDSDK_CONFIG=str(self.root / "no-gcloud-config"),
            NO_GCE_CHECK="true",
        )
        return env

    def pgops_env(self, dbname: str, **settings: str) -> dict[str, str]:
        env = self.base_env()
        env.update(
            PGOPS_ENV_FILE=str(self.env_file),
            PGOPS_PG_CONNINFO=self.cluster.conninfo,
            PGOPS_PG_BINDIR=str(BINDIR),
            PGOPS_TARGET="bench",
            PGOPS_DATABASES=dbname,
            PGOPS_LOCK_DIR=str(self.root / "lock"),
        )
        env.update(settings)
        return env

    def measure(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, stdout: Path | None = None,
                emulator: bool = False, aux_pid: int | None = None) -> tuple[Sample, str]:  # fmt: skip
        self.cluster.quiesce()
        log_dir = self.logs / f"run{self.run_no}"
        log_dir.mkdir(exist_ok=True)
        sample, stderr = run_measured(
            re.sub(r"[^\w.-]+", "_", name), argv, env=env or self.base_env(), server_pid=self.cluster.postmaster_pid,
            stdout=stdout, aux_pid=self.moto.pid if emulator else aux_pid, log_dir=log_dir,
        )  # fmt: skip
        sample.name = name
        sample.extra["run"] = self.run_no
        self.samples.append(sample)
        rss = f"{(sample.hwm_kib or sample.maxrss_kib) / 1024:6.1f}"
        stored = f"  stored {sample.stored_bytes / 1e6:8.1f} MB" if sample.stored_bytes else ""
        print(f"  {name:<44} {sample.wall:7.2f} s  cpu {sample.cpu:6.2f} s  rss {rss} MiB{stored}", flush=True)
        return sample, stderr

    @contextlib.contextmanager
    def tolerate(self, name: str) -> Iterator[None]:
        """A failed variant is recorded with its error (and the emulator's complaints) and the run goes on."""
        try:
            yield
        except CommandFailed as e:
            failure: dict[str, Any] = {"run": self.run_no, "variant": name, "error": str(e)}
            if "s3" in name:
                failure["emulator_log"] = self.moto.log_tail()
            elif "gs://" in name and self.gcs is not None:
                failure["emulator_log"] = self.gcs.log_tail()
            self.failures.append(failure)
            print(f"  FAILED {name}: {e}", flush=True)

    def pg_dump(self, *opts: str, dbname: str = DB) -> list[str]:
        return [str(BINDIR / "pg_dump"), *opts, "-d", self.cluster.dsn(dbname)]

    @staticmethod
    def pipeline(*commands: list[str]) -> list[str]:
        return ["bash", "-o", "pipefail", "-c", " | ".join(shlex.join(c) for c in commands)]

    def pgops_backup(self, name: str, env: dict[str, str], *, emulator: bool = False, aux_pid: int | None = None
                     ) -> Sample:  # fmt: skip
        sample, stderr = self.measure(name, [*PGOPS, "backup"], env=env, emulator=emulator, aux_pid=aux_pid)
        done = BACKUP_DONE.findall(stderr)
        sample.stored_bytes = sum(int(b) for _, b, _ in done)  # dump + globals, as the store holds them
        sample.extra["dump_bytes"] = next(int(b) for db, b, _ in done if db != "@globals")
        sample.extra["raw_bytes"] = next(int(r) for db, _, r in done if db != "@globals")
        return sample

    def check_restored(self, dbname: str) -> None:
        got = self.cluster.row_counts(dbname)
        if got != self.expected_rows:
            raise RuntimeError(f"restored {dbname} has rows {got}, the source has {self.expected_rows}")
        self.cluster.drop_database(dbname)

    # --- the variants ----------------------------------------------------------------------------------

    def dumps(self) -> None:
        f = self.files
        z0 = self.pg_dump("-Fc", "-Z0")
        self.measure("pg_dump -Fc -Z0 > /dev/null (floor)", z0)
        for name, argv, out in (
            ("pg_dump -Fc -Z0 -f file", [*z0, "-f", str(f / "z0.dump")], f / "z0.dump"),  # kept for the restores
            ("pg_dump -Fc -f file (gzip in pg_dump)", [*self.pg_dump("-Fc"), "-f", str(f / "fc.dump")], f / "fc.dump"),
        ):
            s, _ = self.measure(name, argv)
            s.stored_bytes = out.stat().st_size
        self.measure("pg_dump -Fc -Z0 | gzip > file", self.pipeline(z0, ["gzip"]), stdout=f / "dump.gz")
        self.measure("pg_dump -Fc -Z0 | zstd -1 -T2 > file", self.pipeline(z0, ["zstd", "-q", "-1", "-T2"]),
                     stdout=f / "dump.zst")  # fmt: skip
        self.measure("pg_dump -Fc -Z0 | zstd -3 -T2 > file", self.pipeline(z0, ["zstd", "-q", "-3", "-T2"]),
                     stdout=f / "dump.zst")  # fmt: skip
        for p in (f / "fc.dump", f / "dump.gz", f / "dump.zst"):
            p.unlink()

    def pgops_backups(self) -> None:
        for level in (3, 1):
            store = self.stores / f"local-z{level}"
            env = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{store}", PGOPS_COMPRESSION_LEVEL=str(level))
            name = f"pgops backup → file:// ({'default settings, zstd 3' if level == 3 else 'zstd 1'})"
            with self.tolerate(name):
                self.pgops_backup(name, env)
        prefix = f"run{self.run_no}"
        env = self.pgops_env(DB, **self.moto.env(BUCKET, prefix))
        with self.tolerate(name := "pgops backup → s3:// moto (zstd 3)"):
            s = self.pgops_backup(name, env, emulator=True)
            s.extra["listed_bytes"] = self.moto.stored_bytes(BUCKET, prefix)
        self.moto.empty(BUCKET, prefix)
        # The fair anchor of the s3:// row: the pipeline a user would write, to the same emulator in the same run
        # (moto's CPU counted the same way). No checksums, no manifest, no globals: pgops does more than this.
        upload = [sys.executable, "-m", "bench.s3_put_stdin", f"s3://{BUCKET}/{prefix}/anchor.dump.zst"]
        z0 = self.pg_dump("-Fc", "-Z0")
        with self.tolerate(name := "pg_dump -Fc -Z0 | zstd -3 -T2 | boto3 upload_fileobj → s3:// moto"):
            s, _ = self.measure(name, self.pipeline(z0, ["zstd", "-q", "-3", "-T2"], upload),
                                env={**self.base_env(), **self.moto.env(BUCKET, prefix), "PYTHONPATH": str(REPO)},
                                emulator=True)  # fmt: skip
            s.stored_bytes = self.moto.stored_bytes(BUCKET, prefix)
        self.moto.empty(BUCKET, prefix)

    def pgbackrest(self) -> None:
        self.cluster.set_archive_command(self.pgbr.archive_command())
        try:
            with self.tolerate(name := "pgBackRest full backup (zst 1, 2 processes)"):
                s, _ = self.measure(name, self.pgbr.argv("backup", "--type=full"))
                s.stored_bytes = self.pgbr.last_backup_size()
        finally:
            self.cluster.set_archive_command("/bin/true")
        target = self.pgbr.new_restore_dir(f"restore-{self.run_no}")
        try:
            with self.tolerate(name := "pgBackRest restore (new data dir)"):
                self.measure(name, self.pgbr.argv("restore", f"--pg1-path={target}"))
        finally:
            shutil.rmtree(target, ignore_errors=True)
        self.pitr_restore()

    def pitr_restore(self) -> None:
        """What a PITR costs end to end: pgBackRest's restore to the end of the backup (`--type=immediate`), the
        server started on it, its recovery replayed from the archive and promoted, timed until
        pg_is_in_recovery() is false; then every table's rows are counted against the source."""
        target = self.pgbr.new_restore_dir(f"pitr-{self.run_no}")
        port = free_port()
        pg_ctl = [str(BINDIR / "pg_ctl"), "-D", str(target)]
        opts = f"-p {port} -k {target} -c archive_mode=off -c listen_addresses=''"
        promoted = f"{BINDIR / 'psql'} -h {target} -p {port} -XAtc 'SELECT pg_is_in_recovery()' postgres"
        script = " && ".join(
            [
                shlex.join(self.pgbr.command("restore", f"--pg1-path={target}", "--type=immediate",
                                             "--target-action=promote")),
                shlex.join([*pg_ctl, "-l", str(target / "startup.log"), "-w", "-t", "600", "-o", opts, "start"]),
                f'until [ "$({promoted})" = f ]; do sleep 0.05; done',
            ]
        )  # fmt: skip
        try:
            with self.tolerate(report.PGBR_PITR):
                self.measure(report.PGBR_PITR, as_postgres(["bash", "-c", script]))
                with psycopg.connect(f"host={target} port={port} user=postgres dbname={DB}") as c:
                    for table, rows in self.expected_rows.items():
                        got = c.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
                        if got is None or got[0] != rows:
                            raise CommandFailed(f"PITR restore: {table} has {got} rows, expected {rows}")
        finally:
            subprocess.run(as_postgres([*pg_ctl, "-m", "immediate", "-w", "stop"]), capture_output=True, check=False)
            shutil.rmtree(target, ignore_errors=True)

    def restores(self) -> None:
        pg_restore = [str(BINDIR / "pg_restore"), "--exit-on-error"]
        env = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{self.stores / 'local-z3'}")
        restore = [*PGOPS, "restore", "--database", DB, "--target-db", "r_pgops"]
        into = self.cluster.dsn("r_pg_restore")
        variants: list[tuple[str, list[str], dict[str, str] | None, str]] = [
            (f"pg_restore -j{j} (local -Fc -Z0 file)", [*pg_restore, f"--jobs={j}", "-d", into,
             str(self.files / "z0.dump")], None, "r_pg_restore") for j in (2, 1)
        ]  # fmt: skip
        variants += [
            ("pgops restore --jobs 2 --spool-dir (file://)", [*restore, "--jobs", "2", "--spool-dir", str(self.spool)],
             env, "r_pgops"),
            ("pgops restore, streaming (file://)", restore, env, "r_pgops"),
        ]  # fmt: skip
        for name, argv, variant_env, db in variants:
            self.cluster.drop_database(db)
            if db == "r_pg_restore":
                self.cluster.create_database(db)
            with self.tolerate(name):
                self.measure(name, argv, env=variant_env)
                self.check_restored(db)

    def zstd_levels(self) -> None:
        """How size and speed trade off on this dump: zstd CLI on the -Z0 file, already in page cache."""
        out = self.files / "level.zst"
        for level in ZSTD_LEVELS:
            self.measure(f"zstd -{level} -T2 on the -Z0 file", ["zstd", "-q", "-c", f"-{level}", "-T2",
                         str(self.files / "z0.dump")], stdout=out)  # fmt: skip
        self.measure("gzip -6 on the -Z0 file", ["gzip", "-c", str(self.files / "z0.dump")], stdout=out)
        out.unlink()

    # --- issue 4: GCS and age encryption --------------------------------------------------------------

    def setup_issue4(self) -> None:
        """fake-gcs-server with a bucket, and an age key pair made by `age-keygen` (only the public key
        goes to the backups; the identity file is used by the encrypted restore only)."""
        self.gcs = FakeGcsServer(self.root / "fake-gcs-server.log")
        self.gcs.create_bucket(BUCKET)
        keydir = self.root / "age"
        keydir.mkdir(mode=0o700)
        self.age_identity = keydir / "identity.txt"
        subprocess.run(["age-keygen", "-o", str(self.age_identity)], check=True, capture_output=True)
        m = re.search(r"^# public key: (age1\S+)$", self.age_identity.read_text(), re.M)
        if not m:
            raise RuntimeError(f"age-keygen wrote no public key into {self.age_identity}")
        self.age_recipient = m.group(1)

    def issue4_backups(self) -> None:
        """The unencrypted and the encrypted file:// backup twice each, back to back, in ABBA order (BAAB in
        even rounds): whichever runs second in a pair was measured 5-15 % slower, so a single pair per
        round biases the ratio by the order. Then GCS (and two diagnostics) and, for reference, S3."""
        assert self.gcs is not None
        plain = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{self.stores / 'i4-plain'}")
        age = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{self.stores / 'i4-age'}",
                             PGOPS_AGE_RECIPIENTS=self.age_recipient)  # fmt: skip
        for name, env in abba([(report.I4_PLAIN, plain), (report.I4_AGE, age)], self.run_no):
            with self.tolerate(name):
                self.pgops_backup(name, env)
        prefix = f"run{self.run_no}"
        with self.tolerate(name := report.I4_GCS):
            s = self.pgops_backup(name, self.pgops_env(DB, **self.gcs.env(BUCKET, prefix)), aux_pid=self.gcs.pid)
            s.extra["listed_bytes"] = self.gcs.stored_bytes(BUCKET, prefix)
        self.gcs.empty(BUCKET, prefix)
        for name, settings in (  # diagnostics for the GCS peak RSS: which part is the chunk, which is zstd
            (report.I4_GCS_8MIB, {"PGOPS_GCS_CHUNK_SIZE": "8MiB"}),
            (report.I4_GCS_1THREAD, {"PGOPS_COMPRESSION_THREADS": "1"}),
        ):
            with self.tolerate(name):
                env = self.pgops_env(DB, **self.gcs.env(BUCKET, prefix), **settings)
                self.pgops_backup(name, env, aux_pid=self.gcs.pid)
            self.gcs.empty(BUCKET, prefix)
        with self.tolerate(name := report.I4_S3):
            s = self.pgops_backup(name, self.pgops_env(DB, **self.moto.env(BUCKET, prefix)), emulator=True)
            s.extra["listed_bytes"] = self.moto.stored_bytes(BUCKET, prefix)
        self.moto.empty(BUCKET, prefix)

    def issue4_restores(self) -> None:
        """Streaming restore of the newest plain and the newest encrypted backup, twice each in ABBA order
        (BAAB in even rounds); each restored database is checked (row counts) and dropped."""
        restore = [*PGOPS, "restore", "--database", DB, "--target-db", "r_pgops"]
        plain = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{self.stores / 'i4-plain'}")
        age = self.pgops_env(DB, PGOPS_STORAGE_URL=f"file://{self.stores / 'i4-age'}",
                             PGOPS_AGE_IDENTITY_FILE=str(self.age_identity))  # fmt: skip
        for name, env in abba([(report.I4_RESTORE_PLAIN, plain), (report.I4_RESTORE_AGE, age)], self.run_no):
            self.cluster.drop_database("r_pgops")
            with self.tolerate(name):
                self.measure(name, restore, env=env)
                self.check_restored("r_pgops")

    def rss_scales(self, scales: list[int]) -> None:
        for scale in scales:
            db = f"bench_s{scale}"
            print(f"-- RSS flatness: loading scale {scale}", flush=True)
            make_dataset(self.cluster, db, scale)
            size = self.cluster.db_size(db)
            store = self.stores / f"rss-{scale}"
            env = self.pgops_env(db, PGOPS_STORAGE_URL=f"file://{store}")
            with self.tolerate(name := f"pgops backup → file:// scale {scale}"):
                s = self.pgops_backup(name, env)
                s.extra.update(scale=scale, db_bytes=size)
            env = self.pgops_env(db, **self.moto.env(BUCKET, f"rss-{scale}"))
            with self.tolerate(name := f"pgops backup → s3:// scale {scale}"):
                s = self.pgops_backup(name, env, emulator=True)
                s.extra.update(scale=scale, db_bytes=size)
            self.moto.empty(BUCKET, f"rss-{scale}")
            shutil.rmtree(store)
            self.cluster.drop_database(db)


def abba(pair: list[tuple[str, dict[str, str]]], run_no: int) -> list[tuple[str, dict[str, str]]]:
    """A, B, B, A in odd rounds and B, A, A, B in even ones: cancels both a linear drift within the round
    and a first-or-second position effect; report.paired() then compares the per-round means."""
    a, b = pair if run_no % 2 else pair[::-1]
    return [a, b, b, a]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=50, help="pgbench scale; the mixed table matches it (default 50)")
    p.add_argument("--repeat", type=int, default=1, help="run every variant N times, interleaved (default 1)")
    p.add_argument("--rss-scales", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                   help="also back up fresh databases at these scales with pgops only, e.g. 10,100")  # fmt: skip
    p.add_argument("--rss-only", action="store_true", help="skip the comparison; only the --rss-scales phase")
    p.add_argument("--workdir", default=None, help="parent of the temp directory (default: $TMPDIR or /tmp)")
    p.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--issue4", action="store_true",
                   help="instead of the comparison: the issue 4 set (file:// with and without age encryption, "
                   "gs:// fake-gcs-server, s3:// moto, plain vs encrypted restore) and its targets")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temp directory (cluster stopped) for inspection")
    p.add_argument("--wal", action="store_true",
                   help="instead of the comparison: pgbench write load with no archiving, pgBackRest archive-push "
                   "sync and async: TPS, the RPO pgops reports under load, the drain time (bench/wal.py)")  # fmt: skip
    p.add_argument("--wal-seconds", type=int, default=60, help="--wal: seconds of pgbench per variant (default 60)")
    p.add_argument("--wal-clients", type=int, default=8, help="--wal: pgbench clients (default 8)")
    p.add_argument("--pooling", action="store_true",
                   help="only pgbench -C, PgBouncer (transaction mode) vs direct (bench/pooling.py)")  # fmt: skip
    p.add_argument("--pooling-seconds", type=int, default=30, help="--pooling: seconds per run (default 30)")
    p.add_argument("--pooling-clients", type=int, default=16, help="--pooling: pgbench clients (default 16)")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: cluster stopped, temp dir removed


@contextlib.contextmanager
def bench_environment(scale: int, workdir: str | None = None, *, keep: bool = False, issue4: bool = False
                      ) -> Iterator[Bench]:  # fmt: skip
    """A running cluster holding the data set at `scale`, the S3 emulator and a pgBackRest stanza, all in
    one temp directory; stopped and removed on exit, whatever happens (SIGTERM included)."""
    signal.signal(signal.SIGTERM, _terminate)
    root = Path(tempfile.mkdtemp(prefix="pgops-bench-", dir=workdir))
    os.chmod(root, 0o755)  # noqa: S103 - the postgres user runs the cluster and pgBackRest below it
    (root / "pg").mkdir()
    cluster = BenchCluster(root / "pg")
    moto: MotoServer | None = None
    bench: Bench | None = None
    try:
        cluster.init_and_start()
        print(f"-- loading pgbench scale {scale} + mixed rows into {DB!r}", flush=True)
        t0 = time.monotonic()
        make_dataset(cluster, DB, scale)
        moto = MotoServer(root / "moto.log")
        moto.create_bucket(BUCKET)
        pgbr = PgBackRest(cluster, root / "pgbackrest")
        pgbr.stanza_create()
        bench = Bench(root, cluster, moto, pgbr)
        if issue4:
            bench.setup_issue4()
        bench.expected_rows = cluster.row_counts(DB)
        bench.dataset = {"scale": scale, "db_bytes": cluster.db_size(DB), "load_seconds": time.monotonic() - t0}
        print(f"   {bench.dataset['db_bytes'] / 1e6:.0f} MB in {bench.dataset['load_seconds']:.0f} s", flush=True)
        bench.measure("warm-up (not reported)", bench.pg_dump("-Fc", "-Z0"))
        bench.samples.clear()
        yield bench
    finally:
        if moto is not None:
            moto.stop()
        if bench is not None and bench.gcs is not None:
            bench.gcs.stop()
        cluster.stop()
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    commit_at_start = report.git_commit()  # other work may land in src/ during a long run: both are recorded
    if args.pooling:
        return pooling_main(args, started)
    with bench_environment(args.scale, args.workdir, keep=args.keep, issue4=args.issue4) as bench:
        if args.wal:
            return wal_main(bench, args, started)
        if args.issue4:
            for n in range(1, args.repeat + 1):
                bench.run_no = n
                print(f"-- run {n}/{args.repeat} (issue 4)", flush=True)
                bench.measure(report.FLOOR, bench.pg_dump("-Fc", "-Z0"))
                bench.measure(report.I4_IMPORTS, [sys.executable, "-c", I4_IMPORTS])
                bench.issue4_backups()
                bench.issue4_restores()
        elif not args.rss_only:
            for n in range(1, args.repeat + 1):
                bench.run_no = n
                print(f"-- run {n}/{args.repeat}", flush=True)
                bench.dumps()
                bench.pgops_backups()
                bench.pgbackrest()
                bench.restores()
            bench.zstd_levels()
        bench.run_no = 0
        bench.rss_scales(args.rss_scales)
        run_args = vars(args) | {"results_dir": str(args.results_dir)}
        version = bench.cluster.version()
        result = report.build(
            bench.samples, args=run_args, dataset=bench.dataset, started=started, server_version=version
        )
        result["failures"] = bench.failures
        result["machine"]["git_commit_at_start"] = commit_at_start
    return publish(result, report.markdown(result), args.results_dir, started, "")


def publish(result: dict[str, Any], table: str, results_dir: Path, started: dt.datetime, suffix: str) -> int:
    """Write the result JSON, then print the table and where the JSON went."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table)
    print(f"\nresults: {path}")
    return 0


def pooling_main(args: argparse.Namespace, started: dt.datetime) -> int:
    """--pooling: bench/pooling.py's rounds on a cluster of its own (pgbench data at --scale), its table and file."""
    root = Path(tempfile.mkdtemp(prefix="pgops-bench-pooling-", dir=args.workdir))
    try:
        with pooling.pooling_bench(root, args.pooling_clients, args.pooling_seconds, args.scale) as pb:
            for n in range(1, args.repeat + 1):
                print(f"-- run {n}/{args.repeat} (pooling)", flush=True)
                for variant in pooling.VARIANTS if n % 2 else reversed(pooling.VARIANTS):
                    pb.run(variant, n)
            version = pb.cluster.version()
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = pooling.summary(pb.samples)
    bouncer = subprocess.run([pooling.PGBOUNCER, "--version"], capture_output=True, text=True, check=True)
    result = {
        "started": started.isoformat(),
        "command": "make bench BENCH_ARGS=" + repr(" ".join(sys.argv[1:])),
        "args": vars(args) | {"results_dir": str(args.results_dir)},
        "machine": report.machine(version) | {"pgbouncer": bouncer.stdout.splitlines()[0]},
        "pooling_rows": rows,
        "pooling_samples": [dataclasses.asdict(s) for s in pb.samples],
    }
    table = pooling.markdown(rows, args.pooling_clients, args.pooling_seconds)
    return publish(result, table, args.results_dir, started, "-pooling")


def wal_main(bench: Bench, args: argparse.Namespace, started: dt.datetime) -> int:
    """--wal: bench/wal.py's rounds, its table on stdout and its own results file."""
    wb = wal.WalBench(bench.root, bench.cluster, bench.pgbr, DB)
    for n in range(1, args.repeat + 1):
        load = f"{args.wal_seconds} s of pgbench -N, {args.wal_clients} clients"
        print(f"-- run {n}/{args.repeat} (WAL archiving, {load})", flush=True)
        wb.round(n, args.wal_seconds, args.wal_clients)
    rows = wal.summary(wb.samples)
    result = {
        "started": started.isoformat(),
        "command": "make bench BENCH_ARGS=" + repr(" ".join(sys.argv[1:])),
        "args": vars(args) | {"results_dir": str(args.results_dir)},
        "machine": report.machine(bench.cluster.version()),
        "dataset": bench.dataset,
        "wal_rows": rows,
        "wal_samples": [dataclasses.asdict(s) for s in wb.samples],
    }
    return publish(result, wal.markdown(rows), args.results_dir, started, "-wal")


if __name__ == "__main__":
    sys.exit(main())
