#!/usr/bin/env bash
# The package admits an older torch than the one CI installs (pyproject.toml: torch>=2.11; constraints.txt
# pins 2.14.1), and the GPU image runs that older one. A C++ source that only the newer headers accept
# (torch 2.11 found `t.sum({0, 1})` ambiguous) still installs there -- setup.py records the failed module
# and pip succeeds -- and every kernel test then skips. So: every C++ source of the extension must compile
# against the oldest admitted torch's headers. Only the headers are taken from that torch's wheel, and each
# translation unit is checked with g++ -fsyntax-only (overload resolution and template instantiation, no
# code generation); the CUDA kernels (.cu) include no torch header and are compiled by compile_cuda.sh.
# Usage: .ci/check_torch_floor.sh [python]   (run after the install: it reads the CUDA toolkit from the
# build record). Without network access to the wheel it says so and checks nothing (exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-python}"

floor="$("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(re.search(r">=\s*([0-9.]+)", d).group(1) for d in deps if re.match(r"torch\b", d)))
PY
)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! "$PYTHON" -m pip download -q --no-deps "torch==${floor}.*" -d "$work/wheel" >"$work/download.log" 2>&1; then
  grep -v "^WARNING: Location" "$work/download.log" | tail -3
  echo "check_torch_floor: could not download torch ${floor}'s wheel: NOT checked against its headers"
  exit 0
fi
wheel="$(ls "$work"/wheel/torch-*.whl)"
"$PYTHON" - "$wheel" "$work/headers" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith("torch/include/")])
PY
include="$work/headers/torch/include"
toolkit="$("$PYTHON" -c 'import json; print(json.load(open("avfused/_build_info.json"))["cuda"].get("toolkit") or "")' \
  2>/dev/null || true)"
python_include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
# the CUDA libraries' headers (cusparse.h, ...) that torch's CUDA headers include come from the nvidia wheels
# installed beside torch, as setup.py finds them
cuda_libraries="$("$PYTHON" -c 'import glob, os, sys
print(" ".join("-I" + d for e in sys.path for d in sorted(glob.glob(os.path.join(e, "nvidia", "*", "include")))))')"
echo "== C++ sources against $(basename "$wheel")'s headers (g++ -fsyntax-only)"

check() {  # check SOURCE: one translation unit, flags as torch.utils.cpp_extension builds it
  local src="$1" module=_C_cpu extra=()
  if [[ "$src" == *_cuda_host.cpp || "$src" == csrc/module_cuda.cpp ]]; then
    [ -n "$toolkit" ] || { echo "   $src: skipped, no CUDA toolkit in the build record"; return 0; }
    module=_C_cuda
    extra=(-I"$toolkit/include" $cuda_libraries)
  fi
  if g++ -fsyntax-only -std=c++17 -fopenmp -Wno-psabi -DTORCH_API_INCLUDE_EXTENSION_H \
    -DTORCH_EXTENSION_NAME="$module" -D_GLIBCXX_USE_CXX11_ABI=1 -I"$include" \
    -I"$include/torch/csrc/api/include" -I"$python_include" "${extra[@]}" "$src" 2>"$work/$(basename "$src").log"; then
    echo "   $src: ok"
  else
    echo "   $src: FAILED"
    head -40 "$work/$(basename "$src").log"
    return 1
  fi
}
export -f check
export include toolkit python_include cuda_libraries work
find csrc -name '*.cpp' | sort | xargs -P "${MAX_JOBS:-$(nproc)}" -I{} bash -c 'check "$1"' _ {} \
  || { echo "check_torch_floor: a C++ source does not compile against torch ${floor}'s headers (above)" >&2; exit 1; }
