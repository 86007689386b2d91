#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine: apt packages, then the project venv from exact pins.
# Safe to run again: it installs only what is missing and rebuilds the venv only when the pins change.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  postgresql-15 postgresql-client-15 zstd age pgbackrest
  podman runc debootstrap uidmap slirp4netns fuse-overlayfs netavark aardvark-dns iptables
  openssl make git
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
echo "bootstrap: ok ($VENV)"
