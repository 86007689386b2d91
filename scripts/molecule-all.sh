#!/usr/bin/env bash
# Build (or reuse) the local systemd test images, then run `molecule test` for every scenario under
# molecule/. Exits non-zero if any scenario fails. Needs scripts/bootstrap.sh to have run (podman, runc,
# debootstrap and the project venv).
#
# Usage: scripts/molecule-all.sh [scenario ...]     (default: every molecule/*/molecule.yml)
# Env:   MOLECULE_JOBS=N  run up to N scenarios at once (default 1). Each scenario has its own containers,
#        network and subnet, so they do not meet; with N > 1 each scenario's output goes to a log file that is
#        printed whole when it ends, longest scenarios first so that the slots finish close together.
#        MOLECULE_TIMES=FILE  append a line per step to FILE: name, seconds, result, tab-separated
#        (scripts/test-all.sh prints them in its summary).
#        MOLECULE_FAILURES=FILE  append, for each failed scenario, the lines of its output that say why (failed
#        tests, failed tasks), so that the end of a long log names the cause (scripts/test-all.sh prints it last).
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

record() {  # record NAME SECONDS RESULT
  [ -z "${MOLECULE_TIMES:-}" ] || printf '%s\t%s\t%s\n' "$@" >>"$MOLECULE_TIMES"
}
digest() {  # digest SCENARIO LOG: why it failed, in a few lines
  [ -z "${MOLECULE_FAILURES:-}" ] || ./scripts/failure-digest.sh "$@" >>"$MOLECULE_FAILURES"
}
start=$SECONDS
molecule/images/build.sh
# The wheelhouses the end-to-end scenario installs on its hosts (reproducible: unchanged source, same bytes).
./scripts/build-wheels.sh
record "(images, wheels)" $((SECONDS - start)) passed

scenarios=("$@")
if ((${#scenarios[@]} == 0)); then
  # Longest first (measured), except that pooling goes before example: with two slots the next scenario takes the
  # first free one, and in CI's times (ha 1835 s, pitr 2012, runbooks 1406, e2e 1152, example 863, pooling 464,
  # postgresql 473) this order ends both slots within 15 s of each other (4114 s), against 4188 s longest first.
  # Then any others in name order.
  for s in ha pitr runbooks e2e pooling example postgresql; do [ -f "molecule/$s/molecule.yml" ] && scenarios+=("$s"); done
  for f in molecule/*/molecule.yml; do
    s=$(basename "$(dirname "$f")")
    [[ " ${scenarios[*]} " == *" $s "* ]] || scenarios+=("$s")
  done
fi
jobs=${MOLECULE_JOBS:-1}
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "molecule-all: MOLECULE_JOBS=$jobs; valid: a whole number >= 1" >&2; exit 2; }

failed=()
logs=$(mktemp -d /tmp/molecule-all.XXXXXX)
trap 'rm -rf "$logs"' EXIT
if ((jobs == 1)); then
  for s in "${scenarios[@]}"; do
    echo "molecule-all: scenario $s"
    start=$SECONDS
    if molecule test --scenario-name "$s" 2>&1 | tee "$logs/$s.log"; then
      echo "molecule-all: scenario $s passed in $((SECONDS - start)) s"
      record "$s" $((SECONDS - start)) passed
    else
      echo "molecule-all: scenario $s FAILED after $((SECONDS - start)) s" >&2
      record "$s" $((SECONDS - start)) FAILED
      digest "$s" "$logs/$s.log"
      failed+=("$s")
    fi
  done
else
  declare -A pids=()
  finish_one() {  # wait for any running scenario, print its log and result
    local pid rc=0 s took
    wait -n -p pid "${!pids[@]}" || rc=$?
    s=${pids[$pid]}
    unset "pids[$pid]"
    took=$(($(date +%s) - $(cat "$logs/$s.start")))
    echo "molecule-all: ---- output of scenario $s ----"
    cat "$logs/$s.log"
    if ((rc == 0)); then
      echo "molecule-all: scenario $s passed in $took s"
      record "$s" "$took" passed
    else
      echo "molecule-all: scenario $s FAILED after $took s" >&2
      record "$s" "$took" FAILED
      digest "$s" "$logs/$s.log"
      failed+=("$s")
    fi
  }
  for s in "${scenarios[@]}"; do
    while ((${#pids[@]} >= jobs)); do finish_one; done
    echo "molecule-all: scenario $s started (up to $jobs at once)"
    date +%s >"$logs/$s.start"
    molecule test --scenario-name "$s" >"$logs/$s.log" 2>&1 &
    pids[$!]=$s
  done
  while ((${#pids[@]} > 0)); do finish_one; done
fi

if ((${#failed[@]})); then
  echo "molecule-all: failed scenarios: ${failed[*]}" >&2
  exit 1
fi
echo "molecule-all: all ${#scenarios[@]} scenario(s) passed"
