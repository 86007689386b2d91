#!/usr/bin/env bash
# Set everything up, then back up and restore a demo database locally (no cloud account needed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py
