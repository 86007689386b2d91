#!/usr/bin/env bash
# The body of `make test` (= .ci/run): lint, pytest on four workers (the Molecule images build beside it), then every
# Molecule scenario, each stage timed.
# It stops at the first failed stage, as make would, and always ends with a table of each stage's time and result,
# and each Molecule scenario's (scripts/molecule-all.sh writes them), so that a slow suite shows where its time went.
# When a stage fails, the very end says why: the failed tests and tasks of each failed Molecule scenario, or the last
# lines of any other stage's standard output (a CI log is often read from its tail only).
# Env: PYTEST_PARALLEL (pytest's parallel flags, from the Makefile), VENV (default .venv).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
times=$(mktemp -d /tmp/pgops-test-times.XXXXXX)
export MOLECULE_TIMES="$times/molecule" MOLECULE_FAILURES="$times/molecule-failures"
: >"$times/stages"
t0=$SECONDS

summary() {
  echo
  echo "test-all: ---- time per stage ----"
  while IFS=$'\t' read -r name secs result; do printf 'test-all:   %-28s %6s s  %s\n' "$name" "$secs" "$result"; done <"$times/stages"
  if [ -s "$MOLECULE_TIMES" ]; then
    while IFS=$'\t' read -r name secs result; do printf 'test-all:     molecule %-19s %6s s  %s\n' "$name" "$secs" "$result"; done <"$MOLECULE_TIMES"
  fi
  printf 'test-all:   %-28s %6s s\n' total $((SECONDS - t0))
  if [ -s "$times/why" ]; then
    echo "test-all: ---- why it failed ----"
    sed 's/^/test-all: /' "$times/why"
  fi
  rm -rf "$times"
}
trap summary EXIT

stage() {  # stage NAME COMMAND...: run it, record its time, stop the suite if it fails
  local name=$1 start=$SECONDS rc=0
  shift
  echo "test-all: stage $name"
  "$@" | tee "$times/last.log"
  rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    if [ -s "$MOLECULE_FAILURES" ]; then cp "$MOLECULE_FAILURES" "$times/why"; else tail -n 15 "$times/last.log" >"$times/why"; fi
  fi
  printf '%s\t%s\t%s\n' "$name" $((SECONDS - start)) "$( ((rc == 0)) && echo passed || echo "FAILED (exit $rc)")" >>"$times/stages"
  ((rc == 0)) || exit "$rc"
}

stage setup ./scripts/bootstrap.sh
# The two linter groups side by side, each one's output kept together.
stage lint make --no-print-directory -j2 --output-sync=target lint-only
# The Molecule images (debootstrap: mostly the mirror and dpkg, a few minutes on a fresh machine) build while pytest
# runs; the molecule stage waits for them first. scripts/molecule-all.sh then finds them up to date.
# (Its status goes through a file: each stage runs in a pipeline's subshell, which cannot wait for this shell's jobs.)
{
  rc=0
  molecule/images/build.sh >"$times/images.log" 2>&1 || rc=$?
  echo "$rc" >"$times/images.rc"
} &
images() {  # the background build's result; its output when it failed
  local rc
  until [ -s "$times/images.rc" ]; do sleep 1; done
  rc=$(cat "$times/images.rc")
  ((rc == 0)) || cat "$times/images.log" >&2
  return "$rc"
}
# shellcheck disable=SC2086  # PYTEST_PARALLEL holds several flags
stage pytest "$bin/pytest" ${PYTEST_PARALLEL:--n 4 --dist loadfile --no-loadscope-reorder} tests
stage "images (built during pytest)" images
stage molecule ./scripts/molecule-all.sh
