#!/usr/bin/env bash
# Proves the README's commands on a pristine Debian 12 root that has only a clone of this repository, git
# and make (plus what `debootstrap --variant=minbase` gives): every other step must come from the
# project's own scripts. Run it after changing scripts/bootstrap.sh, the images or the demo.
#
#   1. debootstraps a new bookworm root (minbase + git + make), with the apt sources of an installed
#      Debian 12 machine (bookworm, bookworm-updates, bookworm-security);
#   2. clones this checkout's HEAD into /root/pgops inside it (commit first: uncommitted changes are not
#      part of the proof);
#   3. runs `make <target>` for each target given, in order, in a privileged podman container whose root
#      is that directory, and records each one's exit status and time in $PRISTINE_DIR/proof.log.
#
# Why a privileged podman container on the directory itself (`--rootfs`): the demo and the tests start
# podman containers of their own, so the pristine machine needs its own network namespace (its bridges,
# iptables rules and the demo's fixed subnet must not meet the host's), its own mounts and cgroups, and a
# root on a real file system so that its podman can use overlay storage (overlay on overlay fails). A
# chroot shares the host's network namespace; systemd-nspawn is not installed here and needs systemd.
# `--cgroupns=private`: on cgroup v1 podman's default is the host's cgroup namespace, and then systemd in
# the demo's containers sees cgroup paths that do not match its own mounts: it refuses PostgreSQL's main
# PID ("does not belong to service") and `systemctl start postgresql@15-main` never returns.
# A network of its own on 10.217.0.0/24: on podman's default network (10.88.0.0/16) the inner podman's
# default network has the same subnet, so its containers (`podman build` RUN steps) have no route out.
#
# Usage: scripts/pristine-proof.sh [TARGET ...]   (default: demo test; CPU-heavy: run it under
#        `flock /tmp/pgops-heavy.lock` on a shared machine)
# Env:   PRISTINE_DIR (default /var/tmp/pgops-pristine; the root is rebuilt there on every run),
#        DEBIAN_MIRROR (default http://deb.debian.org/debian), CONTAINERS_CONF (default the project's)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$repo/molecule/containers.conf}
dir=${PRISTINE_DIR:-/var/tmp/pgops-pristine}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
name=pgops-pristine-$$
targets=("$@")
((${#targets[@]})) || targets=(demo test)
for t in "${targets[@]}"; do
  [[ $t =~ ^[a-z-]+$ ]] || { echo "pristine-proof: '$t' is not a make target name (e.g. demo, test)" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "pristine-proof: needs root (debootstrap, a privileged container)" >&2; exit 2; }
for tool in debootstrap podman git; do
  command -v "$tool" >/dev/null || { echo "pristine-proof: '$tool' not found; run scripts/bootstrap.sh first" >&2; exit 2; }
done
[ -z "$(git status --porcelain --untracked-files=no)" ] \
  || echo "pristine-proof: warning: uncommitted changes are not part of the proof (it clones HEAD $(git rev-parse --short HEAD))" >&2

root=$dir/root
log=$dir/proof.log
mkdir -p "$dir"
cleanup() {
  podman rm -f -t 10 "$name" >/dev/null 2>&1 || true
  podman network rm -f "$name" >/dev/null 2>&1 || true
  # The inner podman's overlay mounts live in the container's mount namespace; nothing is left mounted here.
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf 'pristine-proof: [%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$log"; }
: >"$log"
say "debootstrap bookworm (minbase + git + make) into $root"
rm -rf "$root"
start=$SECONDS
debootstrap --variant=minbase --include=git,make bookworm "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 \
  || { tail -n 20 "$dir/debootstrap.log" >&2; exit 1; }
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
say "root ready in $((SECONDS - start)) s"
git clone -q --no-local "$repo" "$root/root/pgops"
git -C "$root/root/pgops" checkout -q "$(git rev-parse HEAD)"
say "cloned $(git rev-parse --short HEAD) ($(git log -1 --format=%s | cut -c1-72)) into /root/pgops"

# The one thing taken from this machine: the CA bundle of its network. Where TLS is inspected (as here),
# pip needs it as a fresh machine on that network has it (PIP_CERT or pip.conf's `cert`); the package
# index stays PyPI's.
site=()
ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  site=(--volume "$ca:/etc/pgops-site-ca.crt:ro" --env PIP_CERT=/etc/pgops-site-ca.crt)
  say "pip trusts this machine's CA bundle $ca (PIP_CERT)"
fi

podman network rm -f "$name" >/dev/null 2>&1 || true
podman network create --subnet 10.217.0.0/24 "$name" >/dev/null

status=0
for t in "${targets[@]}"; do
  say "make $t: started"
  start=$SECONDS
  # CI=true as .ci/run has it; nothing from this machine's environment goes in.
  # In the background and waited for, so that SIGINT/SIGTERM reach the traps (and remove it) at once.
  podman run --rm --privileged --cgroupns=private --network "$name" --name "$name" --hostname pgops-pristine --env CI=true \
    "${site[@]}" --workdir /root/pgops --rootfs "$root" /bin/bash -c "make $t" >"$dir/make-$t.log" 2>&1 &
  rc=0
  wait $! || rc=$?
  if ((rc == 0)); then
    say "make $t: PASSED in $((SECONDS - start)) s (log $dir/make-$t.log)"
  else
    say "make $t: FAILED with exit $rc after $((SECONDS - start)) s (log $dir/make-$t.log)"
    tail -n 30 "$dir/make-$t.log" >&2
    status=1
    break
  fi
done
exit "$status"
