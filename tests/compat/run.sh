#!/usr/bin/env bash
# Runs the ECS compatibility suite: builds the berth binary, makes sure the
# Python venv has boto3/awscli/pytest, then runs pytest against real
# `berth server` child processes (loopback only, temp data dirs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup-python
cargo build -p berth
# conftest.py finds the binary under CARGO_TARGET_DIR; cargo may have been
# told elsewhere (a cargo config's build.target-dir), so ask it.
BERTH_BIN="${BERTH_BIN:-$(cargo metadata --format-version 1 --no-deps |
  .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/berth}"
export BERTH_BIN
exec .venv/bin/python -m pytest tests/compat -q "$@"
