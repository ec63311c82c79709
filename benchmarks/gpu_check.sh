#!/usr/bin/env bash
# GPU check in one command (an H100 with torch + triton preinstalled, no network), under 10 minutes:
#   1. install avfused in place (builds the C++/CUDA extension when setup.py exists),
#   2. run the Triton and CUDA equivalence tests on the GPU (the @pytest.mark.gpu ones included),
#   3. print the benchmark table (`python -m avfused bench`) when that command exists.
# Every step has its own time limit and log; a failing step does not stop the later ones.
# Outputs go under $OUT when set, else benchmarks/results/gpu_check/. Exit status 1 if any step failed.
#
#   bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT_DIR"
unset TRITON_INTERPRET  # real kernels on the GPU, never the interpreter
PYTHON="${PYTHON:-python}"
failed=0

run_step() {  # run_step NAME SECONDS COMMAND...: log to $OUT_DIR/NAME.log, report the exit status
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start))s (full log: $OUT_DIR/$name.log)"
    [ "$rc" -eq 0 ] || failed=1
    echo "$name $rc $((SECONDS - start))s" >>"$OUT_DIR/summary.txt"
}

: >"$OUT_DIR/summary.txt"
{
    nvidia-smi 2>&1 || echo "nvidia-smi not found"
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} >"$OUT_DIR/environment.txt" 2>&1
cat "$OUT_DIR/environment.txt"

if [ -f setup.py ]; then
    run_step install 200 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
else
    run_step install 120 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
fi

run_step tests 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT_DIR/tests.xml" \
    tests/ops tests/test_model_backends.py tests/test_backends.py tests/test_cuda_loader.py

if "$PYTHON" -m avfused bench --help >/dev/null 2>&1; then
    # --time-limit: no new case after 130 s (the whole model first), so the table is written before the step's limit
    run_step bench 220 "$PYTHON" -m avfused bench --device cuda --budget 1 --repeats 10 --time-limit 130 \
        --output-dir "$OUT_DIR"
else
    echo "== bench: 'python -m avfused bench' is not available here; skipped" | tee -a "$OUT_DIR/summary.txt"
fi

echo "== summary (name, exit status, seconds):"
cat "$OUT_DIR/summary.txt"
exit "$failed"
