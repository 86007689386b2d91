#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: apt packages, then the project venv from exact pins, then
# the smoke check (scripts/smoke.sh: containers on a podman network reach PostgreSQL and the emulators).
# Safe to run again: it installs only what is missing, rebuilds the venv only when the pins change, and runs
# the smoke check again whenever the installed packages, the venv or the container settings change
# (SMOKE=1 runs it anyway). scripts/pristine-proof.sh proves all of this from a bare Debian 12 root.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv: Debian's python3 has no ensurepip without it. openssh-client: Ansible reaches the demo's
# and Molecule's containers over SSH. prometheus: promtool for `make lint` (checks and tests the alert rules).
# pgbouncer: `make bench BENCH_ARGS=--pooling` (pgbench through PgBouncer against direct connections).
APT_PACKAGES=(
  python3 python3-venv
  postgresql-15 postgresql-client-15 zstd age pgbackrest
  podman runc debootstrap uidmap slirp4netns fuse-overlayfs netavark aardvark-dns iptables
  openssl openssh-client ca-certificates make git
  prometheus pgbouncer
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The Debian postgresql package would start a system cluster on 5432; tests start their own clusters.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the Prometheus server and the PgBouncer it installs (ports 9090 and 6432); only promtool and the
  # pgbouncer binary are wanted here. Stopped only when this run installed them, so a server someone runs on purpose
  # is left alone.
  for service in prometheus pgbouncer; do
    if [[ " ${missing[*]} " == *" $service "* ]] && [ -d /run/systemd/system ]; then
      $SUDO systemctl --quiet disable --now "$service.service"
    fi
  done
fi

VENV=${VENV:-.venv}
stamp="$VENV/.pins-$(cat requirements/dev.txt requirements/runtime.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # Updated in place (pip installs only what changed), so a running test never loses its interpreter.
  echo "bootstrap: installing the pinned requirements into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements/dev.txt -c requirements/runtime.txt
  "$VENV/bin/pip" install -q --no-deps -e .
  rm -f "$VENV"/.pins-*
  touch "$stamp"
fi

# The smoke check's result is kept for this exact machine state: the installed versions of the packages
# above, the venv's pins, the container settings and the check itself.
mkdir -p .cache
smoke_stamp=.cache/smoke-ok-$( {
  dpkg-query -W -f='${Package} ${Version} ${Status}\n' "${APT_PACKAGES[@]}" 2>&1
  basename "$stamp"
  cat "${CONTAINERS_CONF:-molecule/containers.conf}" scripts/smoke.sh 2>&1
} | sha256sum | cut -c1-16)
if [ -f "$smoke_stamp" ] && [ "${SMOKE:-0}" != 1 ]; then
  echo "bootstrap: smoke check passed before on this machine state ($smoke_stamp; SMOKE=1 runs it again)"
else
  rm -f .cache/smoke-ok-*
  VENV=$VENV ./scripts/smoke.sh
  touch "$smoke_stamp"
fi
echo "bootstrap: ok ($VENV)"
