#!/usr/bin/env bash
# GPU check of the triton backend, in about 8 minutes at most. Installs nothing.
#
#   1. the GPU tests (pytest -m gpu): realistic sizes, float32/float16/bfloat16 against the
#      float64 spec, deterministic backward;
#   2. benchmarks/triton_roofline.py: copy bandwidth, Z convolution alone, contraction kernels
#      alone, whole op, im2col, with PASS/FAIL against the issue's targets;
#   3. the backend table of `python -m metasr bench` (float32, then bfloat16 if time is left).
#
# Usage: benchmarks/gpu_check.sh            (results in $OUT, else benchmarks/results)
# Environment: PYTHON (default: .venv/bin/python if present, else python3), OUT.
# Exit status: 0 if every stage succeeded, else 1 (the log says which failed).

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$RESULTS"

BUDGET_S=470 # whole script; each stage gets at most its share of what is left
START=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
FAILED=()

stage() { # stage NAME MAX_SECONDS CMD...: run CMD under a timeout, log to $RESULTS/NAME.log
    local name=$1 max=$2
    shift 2
    local t
    t=$(left)
    ((t > max)) && t=$max
    if ((t < 20)); then
        echo "== $name: skipped, time budget spent" | tee "$RESULTS/$name.log"
        FAILED+=("$name (no time left)")
        return
    fi
    echo "== $name (at most ${t}s): $*"
    timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$RESULTS/$name.log"
    local rc=${PIPESTATUS[0]}
    if ((rc != 0)); then
        FAILED+=("$name (exit $rc$( ((rc == 124)) && echo ', timed out'))")
    fi
}

"$PYTHON" - <<'EOF' || { echo "no usable CUDA device or triton"; exit 1; }
import torch, triton
assert torch.cuda.is_available(), "no CUDA device"
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
EOF

# 1. Tests. TRITON_INTERPRET must be off so the real kernels run.
stage gpu-tests 220 env -u TRITON_INTERPRET "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$RESULTS/gpu-tests.xml"

# Benchmarks measure the real thing: no NaN-poisoned buffers, no interpreter.
unset TRITON_INTERPRET

# 2. Roofline and targets.
stage roofline 90 "$PYTHON" benchmarks/triton_roofline.py --configs div2k-x4,4k-x4 \
    --dtypes float32,bfloat16 --json "$RESULTS/roofline.json"

# 3. Backend table (one subprocess per measurement; --timeout is per measurement).
for dtype in float32 bfloat16; do
    stage "bench-$dtype" 240 "$PYTHON" -m metasr bench --config all --device cuda \
        --dtype "$dtype" --backends im2col,torch,triton --timeout 60 \
        --json "$RESULTS/bench-$dtype.json"
done

echo "== done in $(($(date +%s) - START))s; results in $RESULTS"
if ((${#FAILED[@]})); then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all stages succeeded (targets: see the PASS/FAIL lines of the roofline stage)"
