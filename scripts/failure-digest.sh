#!/usr/bin/env bash
# Print why a Molecule scenario failed, in a few lines, from its whole output: pytest's failed and errored tests and
# their assertion lines (testinfra), and Ansible's failed tasks. Retries of `until` loops and Molecule's notice about
# the absent default scenario are not failures. scripts/molecule-all.sh appends this to $MOLECULE_FAILURES, which
# scripts/test-all.sh prints at the very end of the suite (a CI log is often read from its tail only).
#
# Usage: scripts/failure-digest.sh SCENARIO LOG
set -uo pipefail
echo "scenario $1:"
grep -E '^(FAILED|ERROR) |^E   |fatal: \[|failed: \[|^CRITICAL|^ERROR ' "$2" |
  grep -v -e '^FAILED - RETRYING' -e "'molecule/default/molecule.yml' glob failed" |
  cut -c1-300 | head -n 30 | sed 's/^/  /'
exit 0
