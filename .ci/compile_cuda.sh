#!/usr/bin/env bash
# Compile avfused's CUDA sources with nvcc on a machine without a GPU, so CI catches CUDA compile
# errors every run. Two steps:
#   1. the kernels alone (csrc/<op>/<op>_cuda.cu need no torch headers): nvcc with ptxas resource usage,
#      failing on register spills in any kernel;
#   2. the whole extension: reuse what the install step built, else build it through setup.py with
#      AVFUSED_FORCE_CUDA_BUILD=1 (a CUDA failure fails CI); then both modules must import.
# Usage: .ci/compile_cuda.sh [python]   (default: python on PATH; run from anywhere)
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), CUDA_HOME (default: found from nvcc), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python}"

nvcc_bin="$(command -v nvcc || true)"
if [[ -z "${CUDA_HOME:-}" && -z "$nvcc_bin" ]]; then
  echo "compile_cuda: no nvcc on PATH and no CUDA_HOME; cannot compile the CUDA sources" >&2
  exit 1
fi
NVCC="${CUDA_HOME:+$CUDA_HOME/bin/nvcc}"
NVCC="${NVCC:-$nvcc_bin}"
arch_list="${TORCH_CUDA_ARCH_LIST:-9.0}"
gencode=()
for arch in ${arch_list//;/ }; do
  arch="${arch%+PTX}"
  gencode+=("-gencode=arch=compute_${arch/./},code=sm_${arch/./}")
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "== nvcc $("$NVCC" --version | tail -1)"
for src in csrc/*/*_cuda.cu; do
  echo "== $src (${arch_list})"
  "$NVCC" -O3 -std=c++17 -lineinfo "${gencode[@]}" -Xptxas -v -Werror all-warnings \
    -c "$src" -o "$out/$(basename "$src").o" 2> "$out/ptxas.log" || { cat "$out/ptxas.log" >&2; exit 1; }
  grep -E "Compiling entry|registers|spill" "$out/ptxas.log" | sed 's/^/   /'
  if grep -qE "[1-9][0-9]* bytes spill" "$out/ptxas.log"; then
    echo "compile_cuda: a kernel of $src spills registers (see above); fix it before it lands" >&2
    exit 1
  fi
done

# The install step (pip install -e .) normally built both modules already; rebuild (CUDA forced, so
# a failure stops CI with nvcc's message) only when the build record says the CUDA module is missing.
if "$PYTHON" -c 'import json, sys; r = json.load(open("avfused/_build_info.json")); sys.exit(0 if r["cuda"]["built"] and r["cpu"]["built"] else 1)' 2>/dev/null; then
  echo "== extension already built by the install step; build record:"
else
  echo "== full extension build (setup.py build_ext --inplace, CUDA forced)"
  start=$(date +%s)
  AVFUSED_FORCE_CUDA_BUILD=1 TORCH_CUDA_ARCH_LIST="$arch_list" "$PYTHON" setup.py -q build_ext --inplace
  echo "== built in $(( $(date +%s) - start )) s; build record:"
fi
cat avfused/_build_info.json
"$PYTHON" - <<'PY'
import json, sys
record = json.load(open("avfused/_build_info.json"))
if not (record["cpu"]["built"] and record["cuda"]["built"]):
    sys.exit(f"compile_cuda: extension not fully built: {record}")
import avfused._C_cpu, avfused._C_cuda  # noqa: E401,F401 - both modules load (schemas + CUDA kernels register)
PY
