#!/usr/bin/env bash
# Set up (with test tools), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/ruff check .
# Two test workers (pytest-xdist), each taking whole test files: the end-to-end tests spend much
# of their time waiting (Flower's polling, processes starting), so two overlap well on two cores.
# Each worker's torch uses one thread (tests/conftest.py; two workers of two threads each on two
# cores slowed the model-heavy tests 2.6x); the processes tests start keep their defaults.
# FEDSHIELD_TEST_WORKERS=0 runs every test in this one process.
workers=${FEDSHIELD_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
fi
