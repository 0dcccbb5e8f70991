#!/usr/bin/env bash
# Create .venv (if missing) and install fedshield into it. Safe to run again: it only installs
# what is missing. Usage: bash scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY" >&2
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, pinned: a bare torch requirement would pull several GB of CUDA packages.
.venv/bin/python -c "import torch" 2>/dev/null || "${PIP[@]}" install "torch==2.13.0"
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
echo "setup: installing fedshield${extra} (offline-capable, pinned flwr 1.41.0)" >&2
"${PIP[@]}" install -e ".${extra}" 2>&1 | grep -v -E "^WARNING: Location .* is ignored" >&2 || true
check="import flwr, opacus, transformers, peft, threadpoolctl, common, client, server, simulations"
[ -n "$extra" ] && check="$check, xdist, pytest, hypothesis"
.venv/bin/python -c "$check" \
  || { echo "setup: installation failed" >&2; exit 1; }
