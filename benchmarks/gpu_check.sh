#!/usr/bin/env bash
# The GPU check in one command, planned for 6 minutes on an H200 / H100 with Python, torch and triton
# preinstalled, no PyAV and no network:
#   1. install avfused in place, building the C++/CUDA extension for the card (nvcc; MAX_JOBS = cores);
#   2. the kernel and model tests that run on the GPU (-m gpu over tests/ops, tests/test_model_backends.py,
#      ...; TF32 off), as concurrent pytest processes (benchmarks/gpu_test_shards.py);
#   3. compute-sanitizer memcheck over every fused kernel once (benchmarks/gpu_kernels_once.py), where the
#      tool exists and the machine lets it run;
#   4. the benchmark subset: the whole model, inference at batch 1 and a training step at batch 32, in
#      fp32 (eager, triton, cuda) and under bf16 autocast (eager, triton, cuda, then torch.compile last);
#   5. summary.md, one page of what passed, failed and was measured (benchmarks/gpu_summary.py).
# Each step has a time limit inside one overall deadline (GPU_CHECK_SECONDS, default 345); a step that
# fails or times out does not stop the others, a timed-out step is interrupted (SIGINT) so that pytest still
# reports the tests that ran, and the benchmark writes its rows as it measures them.
# Outputs: $OUT when set (at most 8 files: summary.md, logs.txt, tests.xml, environment.txt and each
# benchmark run's <card>.json / .md), else benchmarks/results/gpu_check/. Exit status 1 if a step failed.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # here, without a GPU: the plumbing, on the CPU
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-345}))
WORK="$(mktemp -d)"
FINAL="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$FINAL"
[ "$DRY" = 1 ] || unset TRITON_INTERPRET  # real kernels on the GPU, never the interpreter
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" TORCHINDUCTOR_COMPILE_THREADS="$(nproc)"
failed=0
: >"$WORK/steps.tsv"

step() {  # step NAME LIMIT COMMAND...: run within min(LIMIT, time left), log to $WORK/NAME.log
    local name="$1" limit="$2"
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$limit" -gt "$left" ] && limit="$left"
    if [ "$limit" -lt 5 ]; then
        echo "== $name: skipped, the check's deadline is reached"
        printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 0 >>"$WORK/steps.tsv"
        return
    fi
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*"
    # SIGINT, not TERM, at the limit: pytest then still writes tests.xml for the tests that ran
    timeout --signal=INT --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$WORK/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || failed=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >>"$WORK/steps.tsv"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    nproc
    "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
'cuda', torch.version.cuda); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
} >"$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt"

if [ "$DRY" = 1 ]; then
    device=cpu
    tests=(tests/test_backends.py tests/test_without_pyav.py)
    bench_sizes=(--quick)
else
    device=cuda
    # only what runs on the GPU (the gpu mark: CUDA and Triton targets, gpu tests); CI covers the CPU paths
    tests=(-m gpu tests/ops tests/test_model_backends.py tests/test_backends.py tests/test_cuda_loader.py
        tests/test_autocast.py)
    bench_sizes=(--batch-sizes 1 --train-batch 32 --budget 2 --repeats 20)
    step install 150 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .
    cat avfused/_build_info.json >>"$WORK/install.log" 2>/dev/null
    # pip succeeds when a module fails to build: fail the check here, with the recorded reason (the build
    # record, or why the module does not load), rather than let every kernel test skip
    step extension 10 "$PYTHON" -c 'import sys
from avfused import _extension
reasons = {"cpu": _extension.cpu_unavailable_reason(), "cuda": _extension.cuda_unavailable_reason()}
for name, reason in reasons.items():
    print(name, "loads" if reason is None else "NOT available: " + reason)
sys.exit(1 if any(reasons.values()) else 0)'
fi

pytest_args=(-q -rs -p no:cacheprovider --durations=5)
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 90)
# Triton's first compiles (CPU work) dominate this step: the test files run as concurrent shards, one per
# 4 cores up to 4 (GPU_CHECK_TEST_SHARDS), each a pytest process; their reports merge into tests.xml
shards=$(( $(nproc) / 4 ))
[ "$shards" -gt 4 ] && shards=4
[ "$shards" -lt 1 ] && shards=1
[ "$DRY" = 1 ] && shards=2  # the plumbing, on this machine's two files
shards="${GPU_CHECK_TEST_SHARDS:-$shards}"
step tests 110 "$PYTHON" benchmarks/gpu_test_shards.py --shards "$shards" --junitxml "$WORK/tests.xml" -- \
    "${pytest_args[@]}" "${tests[@]}"

if command -v compute-sanitizer >/dev/null 2>&1 && [ "$DRY" != 1 ]; then
    step sanitizer 45 compute-sanitizer --tool memcheck --error-exitcode 3 "$PYTHON" benchmarks/gpu_kernels_once.py
else
    echo "compute-sanitizer not found (or dry run): memcheck not run" >"$WORK/sanitizer.log"
fi

bench=("$PYTHON" -m avfused bench --device "$device" --ops model --modes inference,train_step "${bench_sizes[@]}")
step bench-fp32 45 "${bench[@]}" --backends eager,triton,cuda --output-dir "$WORK/bench-fp32"
# whatever time is left; torch.compile runs last and starts no later than 60 s in
step bench-bf16 200 "${bench[@]}" --amp bf16 --time-limit 60 --output-dir "$WORK/bench-bf16"

"$PYTHON" benchmarks/gpu_summary.py "$WORK" >"$WORK/summary.md"
for log in environment install extension tests sanitizer bench-fp32 bench-bf16; do
    [ -f "$WORK/$log.log" ] && { echo "===== $log.log"; cat "$WORK/$log.log"; }
done >"$WORK/logs.txt"
cp "$WORK/summary.md" "$WORK/logs.txt" "$WORK/environment.txt" "$FINAL/"
[ -f "$WORK/tests.xml" ] && cp "$WORK/tests.xml" "$FINAL/"
for run in bench-fp32 bench-bf16; do
    for file in "$WORK/$run"/*.json "$WORK/$run"/*.md; do
        [ -f "$file" ] && cp "$file" "$FINAL/"
    done
done
cat "$WORK/summary.md"
echo "== gpu_check: outputs in $FINAL; $((SECONDS))s in all"
rm -rf "$WORK"
exit "$failed"
