#!/usr/bin/env bash
# Set up and run the default demo: five hospitals, DP-SGD at epsilon <= 1 each, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedshield simulate --scenario hospitals-tabular --compare-no-dp --out runs/demo "$@"
