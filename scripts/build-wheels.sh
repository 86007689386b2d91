#!/usr/bin/env bash
# Build the offline wheelhouse that roles/postgresql_backup installs on hosts (and the bundle image uses).
#
#   dist/pgops/       the pgops wheel, every runtime dependency as a binary wheel (exact pins from
#                     requirements/runtime.txt) and constraints.txt. Hosts install from it with
#                     `pip --no-index --find-links`, so they need no route to a package index.
#   dist/objectstore/ moto[server] and its dependencies, for the demo's and the tests' local S3 host.
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

rm -rf dist/pgops dist/objectstore
mkdir -p dist/pgops dist/objectstore
"$PY" -m pip wheel -q --no-deps -w dist/pgops .
"$PY" -m pip download -q --only-binary=:all: "${target[@]}" -d dist/pgops -r requirements/runtime.txt
cp requirements/runtime.txt dist/pgops/constraints.txt
"$PY" -m pip download -q --only-binary=:all: "${target[@]}" -d dist/objectstore "$(pin moto)" \
  "moto[server]" -c requirements/dev.txt
echo "build-wheels: $(find dist/pgops -name '*.whl' | wc -l) wheels in dist/pgops," \
  "$(find dist/objectstore -name '*.whl' | wc -l) in dist/objectstore"
