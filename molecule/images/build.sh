#!/usr/bin/env bash
# Build (or reuse) the local systemd test images for Molecule: localhost/pgops-debian:12 and :13.
#
# No container registry is reachable on the build machines, so the images are made from Debian's archive
# with debootstrap and imported into podman. Each image is labelled with a hash of this recipe; it is
# rebuilt only when the recipe (this file) changes or the image is missing. FORCE=1 rebuilds anyway.
#
# Usage: molecule/images/build.sh [12] [13]      (default: both)
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1, CONTAINERS_CONF (set if unset)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/../containers.conf}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Only what Ansible, systemd and the tests need; the role itself installs PostgreSQL and its dependencies.
# ca-certificates pulls in openssl (used by the verifier's `openssl s_client`); iproute2 gives `ss`.
# openssh-server is the test transport: Ansible over SSH with pipelining costs a fraction of one
# `podman exec` round trip per task (Molecule's scenario installs its key in prepare.yml).
include=python3,sudo,ca-certificates,systemd,systemd-sysv,iproute2,procps,openssh-server

declare -A suites=([12]=bookworm [13]=trixie)
versions=("$@")
((${#versions[@]})) || versions=(12 13)

for v in "${versions[@]}"; do
  suite=${suites[$v]:-}
  [ -n "$suite" ] || { echo "build.sh: unknown Debian version '$v' (valid: ${!suites[*]})" >&2; exit 2; }
  image=localhost/pgops-debian:$v
  # One build of an image at a time: scripts/test-all.sh builds in the background while pytest's compose tests may
  # ask for :12. A second caller waits here, then finds the image up to date.
  exec 9>"${TMPDIR:-/tmp}/pgops-image-$v.lock"
  flock 9
  recipe=$( { cat "$0"; echo "$suite $include $mirror"; } | sha256sum | cut -c1-16)
  current=$(podman image inspect --format '{{ index .Config.Labels "pgops.recipe" }}' "$image" 2>/dev/null || true)
  if [ "$current" = "$recipe" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "build.sh: $image is up to date (recipe $recipe)"
    continue
  fi
  echo "build.sh: building $image from $suite (recipe $recipe)"
  root=$(mktemp -d /var/tmp/pgops-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  # Container hygiene: a fresh machine-id on first boot, no stale apt lists, no getty on a missing tty.
  : >"$root/etc/machine-id"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
  ln -sf /dev/null "$root/etc/systemd/system/getty.target"
  # A throwaway test container needs no fsync per unpacked file: dpkg's unsafe-io (what the Debian images on Docker Hub
  # set) makes each converge's package installs faster on slow disks. PostgreSQL keeps its own fsync.
  mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
  echo force-unsafe-io >"$root/etc/dpkg/dpkg.cfg.d/pgops-test-unsafe-io"
  # No translated package descriptions: `apt-get update` fetches less.
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/99pgops-test-no-translations"
  # One image layer; the tar stream is checked for failure on both sides of the pipe (pipefail).
  tar -C "$root" --numeric-owner -c . \
    | podman import \
        --change 'CMD ["/sbin/init"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        --change "LABEL pgops.recipe=$recipe" \
        --change "LABEL pgops.suite=$suite" \
        - "$image" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "build.sh: built $image"
done
