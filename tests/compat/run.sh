#!/usr/bin/env bash
# Runs the ECS compatibility suite: builds the berth binary, makes sure the
# Python venv has boto3/awscli/pytest, then runs pytest against real
# `berth server` child processes (loopback only, temp data dirs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
scripts/setup-python
cargo build -p berth
exec .venv/bin/python -m pytest tests/compat -q "$@"
