#!/usr/bin/env bash
# Every full-size timing on an accelerator, in one command (about 8 minutes on one GPU):
#
#   benchmarks/accelerator.sh            # on a GPU or TPU host, from the repository root
#   benchmarks/accelerator.sh --dry-run  # the same steps at tiny sizes: checks the script on a CPU
#
# Prints the device, then: the `full` stage 1 train step (phases 1 and 2, 256 px), the LE map per
# 256-px image with the `full` generator (per_window and the fast methods), each `full` classifier
# train step (224 px, Inception-v3 299 px), RTV on 8 x 256^2 images against the float64 direct
# solve, and the `small` pipeline end to end on the phantoms. Each part prints its own Markdown
# table (see BENCHMARKS.md); the last line is the pipeline's wall time. A part that fails is named
# at the end (exit status 1) and the others still run. PYTHON names the interpreter
# (default .venv/bin/python), FRACATLAS the FracAtlas folder for RTV where ../shared is not beside
# the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=1
elif [[ $# -gt 0 ]]; then
  echo "usage: benchmarks/accelerator.sh [--dry-run]" >&2
  exit 2
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/alenn_accelerator.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

section() { printf '\n## %s\n\n' "$1"; }

"$PY" - <<'PYEOF'
import jax
d = jax.devices()
print(f"device: {d[0].device_kind} x{len(d)} ({d[0].platform}), JAX {jax.__version__}")
PYEOF

if [[ $DRY == 1 ]]; then
  STAGE1=(--size smoke --image_sizes 32 --steps 1 --batch 8)
  LOCALIZE=(--sizes 32 --models smoke --images 1)
  CLASSIFIER=(--size smoke --steps 1 --batch 8)
  RTV=(--cases 2x64 --repeats 1)
  PIPELINE=(--config=configs/pipeline.py:smoke "--config.backbones=('resnet50',)")
else
  STAGE1=(--size full --image_sizes 256 --steps 5)
  LOCALIZE=(--sizes 256 --models full --images 2)
  CLASSIFIER=(--size full --steps 5)
  RTV=(--cases 8x256 --repeats 3)
  PIPELINE=(--config=configs/pipeline.py)
fi
if [[ -n "${FRACATLAS:-}" ]]; then  # Where ../shared/data/fracatlas is not beside the repository.
  RTV+=(--fracatlas "$FRACATLAS")
fi

FAILED=()
# Runs one part; a part that fails is named at the end and the others still run.
part() {
  local name=$1
  shift
  section "$name"
  "$@" || { echo "(failed: exit $?)"; FAILED+=("$name"); }
}
pipeline() {
  local start=$SECONDS
  "$PY" launch.py "${PIPELINE[@]}" --workdir="$WORK/pipeline" \
    --config.data.data_dir="$WORK/data" >"$WORK/pipeline.log" 2>&1 \
    || { tail -20 "$WORK/pipeline.log"; return 1; }
  echo "pipeline (${PIPELINE[0]#--config=}): $((SECONDS - start)) s wall, data built first"
}

part "Stage 1 train step" "$PY" -m benchmarks.stage1_bench "${STAGE1[@]}"
part "LE map per image" "$PY" -m benchmarks.localize_bench "${LOCALIZE[@]}"
part "Classifier train step" "$PY" -m benchmarks.classifier_bench "${CLASSIFIER[@]}"
part "RTV" "$PY" -m benchmarks.rtv_bench "${RTV[@]}"
part "Pipeline end to end" pipeline
if [[ ${#FAILED[@]} -gt 0 ]]; then
  printf '\nfailed parts: %s\n' "${FAILED[*]}"
  exit 1
fi
