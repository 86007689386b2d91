#!/usr/bin/env bash
# The body of `make test` (= .ci/run): setup, pytest on four workers with lint and the Molecule image build beside it,
# then every Molecule scenario, each stage timed.
# It stops at the first failed stage, as make would, and always ends with a table of each stage's time and result,
# and each Molecule scenario's (scripts/molecule-all.sh writes them), so that a slow suite shows where its time went.
# When a stage fails, the very end says why: the failed tests and tasks of each failed Molecule scenario, pytest's
# failed tests, or the last lines of any other stage's standard output (a CI log is often read from its tail only).
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

# why_of LOG: pytest's short summary, one line per failed test (its message can run over hundreds of lines when CI
# is set, as pytest then does not shorten it: a long assertion diff once pushed the test's name out of the last 15
# lines), then the result line; for any other output, its last 15 lines.
why_of() {
  local header='^=* short test summary info =*$'
  if grep -q "$header" "$1"; then
    awk -v header="$header" '$0 ~ header { on = 1; next } on && /^(FAILED|ERROR) / { print substr($0, 1, 300) }' "$1" |
      head -n 40
    tail -n 1 "$1"
  else
    tail -n 15 "$1"
  fi
}

stage() {  # stage NAME COMMAND...: run it, record its time, stop the suite if it fails
  local name=$1 start=$SECONDS rc=0
  shift
  echo "test-all: stage $name"
  "$@" | tee "$times/last.log"
  rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    if [ -s "$MOLECULE_FAILURES" ]; then cp "$MOLECULE_FAILURES" "$times/why"; else why_of "$times/last.log" >"$times/why"; fi
  fi
  printf '%s\t%s\t%s\n' "$name" $((SECONDS - start)) "$( ((rc == 0)) && echo passed || echo "FAILED (exit $rc)")" >>"$times/stages"
  ((rc == 0)) || exit "$rc"
}

# beside NAME COMMAND...: start COMMAND in the background, its output kept in a file; the stage `joined NAME` waits for
# it and shows that output when it failed. (The status goes through a file: each stage runs in a pipeline's subshell,
# which cannot wait for this shell's jobs.)
beside() {
  local name=$1
  shift
  {
    rc=0
    "$@" >"$times/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$times/$name.rc"
  } &
}
joined() {
  local rc
  until [ -s "$times/$1.rc" ]; do sleep 1; done
  rc=$(cat "$times/$1.rc")
  ((rc == 0)) || cat "$times/$1.log"
  return "$rc"
}

stage setup ./scripts/bootstrap.sh
# Beside pytest, whose workers leave the CPU idle about a quarter of the time (they wait on servers, emulators and
# containers): the two linter groups, each one's output kept together, and the Molecule images (debootstrap: mostly
# the mirror and dpkg, a few minutes on a fresh machine). scripts/molecule-all.sh then finds the images up to date.
beside lint make --no-print-directory -j2 --output-sync=target lint-only
beside images molecule/images/build.sh
# shellcheck disable=SC2086  # PYTEST_PARALLEL holds several flags
stage pytest "$bin/pytest" ${PYTEST_PARALLEL:--n 4 --dist loadfile --no-loadscope-reorder} tests
stage "lint (beside pytest)" joined lint
stage "images (built during pytest)" joined images
stage molecule ./scripts/molecule-all.sh
