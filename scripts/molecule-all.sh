#!/usr/bin/env bash
# Build (or reuse) the local systemd test images, then run `molecule test` for every scenario under
# molecule/. Exits non-zero if any scenario fails. Needs scripts/bootstrap.sh to have run (podman, runc,
# debootstrap and the project venv).
#
# Usage: scripts/molecule-all.sh [scenario ...]     (default: every molecule/*/molecule.yml)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# runc and no default ulimits: see ../shared/TEST-ENVIRONMENT.md.
export CONTAINERS_CONF="$root/molecule/containers.conf"
export PATH="$root/${VENV:-.venv}/bin:$PATH"
export ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-0} NO_COLOR=${NO_COLOR:-1} PY_COLORS=${PY_COLORS:-0}

# Ansible and testinfra reach the instances over SSH (see molecule/postgresql/molecule.yml); bootstrap
# installs the OpenSSH client.
for tool in podman debootstrap molecule ssh; do
  command -v "$tool" >/dev/null || { echo "molecule-all: '$tool' not found; run scripts/bootstrap.sh first" >&2; exit 2; }
done

molecule/images/build.sh
# The wheelhouses the end-to-end scenario installs on its hosts (reproducible: unchanged source, same bytes).
./scripts/build-wheels.sh

scenarios=("$@")
if ((${#scenarios[@]} == 0)); then
  for f in molecule/*/molecule.yml; do scenarios+=("$(basename "$(dirname "$f")")"); done
fi

failed=()
for s in "${scenarios[@]}"; do
  echo "molecule-all: scenario $s"
  start=$SECONDS
  if molecule test --scenario-name "$s"; then
    echo "molecule-all: scenario $s passed in $((SECONDS - start)) s"
  else
    echo "molecule-all: scenario $s FAILED after $((SECONDS - start)) s" >&2
    failed+=("$s")
  fi
done

if ((${#failed[@]})); then
  echo "molecule-all: failed scenarios: ${failed[*]}" >&2
  exit 1
fi
echo "molecule-all: all ${#scenarios[@]} scenario(s) passed"
