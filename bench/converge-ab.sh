#!/usr/bin/env bash
# A/B of an idempotent converge: the same Molecule hosts converged with some role files as they were at an older
# commit (old) and as they are in the work tree (new), interleaved per round, so that both meet the same load.
# Needs the scenario's hosts created and converged once (molecule create/prepare/converge -s SCENARIO).
#
# Usage: bench/converge-ab.sh OLD_COMMIT ROUNDS SCENARIO LIMIT FILE...
#   e.g. bench/converge-ab.sh c7af586 3 e2e pgops-e2e-db roles/postgresql_backup/tasks/schedule.yml
# Prints: round, variant, wall seconds, and the host's ok/changed counts. The work tree's files are put back at the
# end (also on failure or Ctrl-C); commit or stash them first if they hold edits you want to keep.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 5)) || { sed -n 2,9p "$0" >&2; exit 2; }
old=$1 rounds=$2 scenario=$3 limit=$4
shift 4
files=("$@")
export CONTAINERS_CONF=$PWD/molecule/containers.conf PATH=$PWD/.venv/bin:$PATH NO_COLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
saved=$(mktemp -d /tmp/converge-ab.XXXXXX)
for f in "${files[@]}"; do mkdir -p "$saved/$(dirname "$f")"; cp "$f" "$saved/$f"; done
restore() { for f in "${files[@]}"; do cp "$saved/$f" "$f"; done; rm -rf "$saved"; }
trap restore EXIT
for round in $(seq "$rounds"); do
  for variant in old new; do
    for f in "${files[@]}"; do
      if [ "$variant" = old ]; then git show "$old:$f" >"$f"; else cp "$saved/$f" "$f"; fi
    done
    log="$saved/$variant-$round.log"
    start=$EPOCHREALTIME
    molecule converge -s "$scenario" -- --limit "$limit" >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
    took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')
    counts=$(grep -E "^ *$limit +:" "$log" | tail -1 | tr -s ' ' | cut -d' ' -f3-4)
    printf '%s\t%s\t%.1f s\t%s\n' "$round" "$variant" "$took" "$counts"
  done
done
