"""Optional C++/CUDA extension build of avfused (package metadata lives in pyproject.toml).

    pip install --no-build-isolation -e .        # CPU module always, CUDA module when nvcc is found

Two extension modules, so a CPU-only build still works; each op's sources are in csrc/<op>/:
    avfused._C_cpu   csrc/module_cpu.cpp, csrc/<op>/<op>_cpu.cpp                       (C++ with OpenMP)
    avfused._C_cuda  csrc/module_cuda.cpp, csrc/<op>/<op>_cuda.cu, csrc/<op>/<op>_cuda_host.cpp

Switches (environment):
    AVFUSED_SKIP_BUILD=1        build no extension (pure-Python install; the 'cuda' backend says why)
    AVFUSED_SKIP_CUDA_BUILD=1   build the CPU module only
    AVFUSED_FORCE_CUDA_BUILD=1  build the CUDA module even without nvcc found by the usual search, and
                                fail the install if it does not compile (CI uses this)
    TORCH_CUDA_ARCH_LIST        CUDA architectures (default "9.0", the H100)
    CUDA_HOME                   the toolkit; else found from nvcc on PATH (wrappers are followed)
    MAX_JOBS                    parallel compile jobs; default bounded by cores and free memory

A failed optional module does not fail the install: the build record avfused/_build_info.json says
what was built and why anything was not, and avfused.available_backends() reports it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
RECORD_NAME = "_build_info.json"
NVCC_MEMORY_PER_JOB_GB = 2.0  # nvcc on torch headers peaks near this


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit_of(nvcc: str) -> str | None:
    """The CUDA toolkit folder of an nvcc binary, following symlinks and one-line wrapper scripts."""
    real = Path(os.path.realpath(nvcc))
    if (real.parent.parent / "include" / "cuda_runtime.h").exists():
        return str(real.parent.parent)
    try:
        if real.stat().st_size < 65536:  # a small shell wrapper: find the nvcc it runs
            for target in re.findall(r"(/[^\s\"']+/bin/nvcc)\b", real.read_text(errors="ignore")):
                if target != str(real) and Path(target).exists():
                    return _toolkit_of(target)
    except OSError:
        pass
    return None


def find_cuda_home() -> tuple[str | None, str]:
    """(toolkit folder or None, how it was found or why not)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _toolkit_of(nvcc)
        if home:
            return home, f"nvcc on PATH ({nvcc})"
        return None, f"nvcc at {nvcc} does not lead to a toolkit with include/cuda_runtime.h; set CUDA_HOME"
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda", "/usr/local/cuda"
    return None, "no nvcc on PATH and no CUDA_HOME"


def default_max_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        available_kb = next(
            int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemAvailable:")
        )
        by_memory = int(available_kb / 1024 / 1024 / NVCC_MEMORY_PER_JOB_GB)
    except (OSError, StopIteration, ValueError):
        by_memory = cores
    return max(1, min(cores, by_memory))


def sources(pattern: str) -> list[str]:
    """Every op's source files matching ``pattern`` (csrc/<op>/<pattern>), relative to the project root."""
    return sorted(str(path.relative_to(ROOT)) for path in ROOT.glob(f"csrc/*/{pattern}"))


def wheel_cuda_include_dirs() -> list[str]:
    """CUDA library headers (cusparse, cublas, ...) that torch's pip wheels ship under site-packages/nvidia."""
    dirs = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if base.is_dir():
            dirs += sorted(str(p) for p in base.glob("*/include") if p.is_dir())
    return dirs


record: dict = {"cpu": {"built": False, "reason": None}, "cuda": {"built": False, "reason": None}}
ext_modules = []
cmdclass = {}

if _flag("AVFUSED_SKIP_BUILD"):
    record["cpu"]["reason"] = record["cuda"]["reason"] = "skipped: AVFUSED_SKIP_BUILD=1 at install time"
else:
    cuda_home, how = find_cuda_home()
    want_cuda = not _flag("AVFUSED_SKIP_CUDA_BUILD")
    force_cuda = _flag("AVFUSED_FORCE_CUDA_BUILD")
    if want_cuda and cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    os.environ.setdefault("MAX_JOBS", str(default_max_jobs()))

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-g0", "-fopenmp", "-Wno-psabi", "-fno-math-errno"]
    ext_modules.append(
        CppExtension(
            "avfused._C_cpu",
            sources=["csrc/module_cpu.cpp", *sources("*_cpu.cpp")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    )
    record["torch"] = torch.__version__
    if not want_cuda:
        record["cuda"]["reason"] = "skipped: AVFUSED_SKIP_CUDA_BUILD=1 at install time"
    elif not cuda_home and not force_cuda:
        record["cuda"]["reason"] = f"skipped: no CUDA toolkit found at install time ({how})"
    else:
        ext_modules.append(
            CUDAExtension(
                "avfused._C_cuda",
                sources=["csrc/module_cuda.cpp", *sources("*_cuda.cu"), *sources("*_cuda_host.cpp")],
                include_dirs=wheel_cuda_include_dirs(),
                extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "-lineinfo"]},
            )
        )
        record["cuda"].update(toolkit=cuda_home, found_by=how, arch_list=os.environ["TORCH_CUDA_ARCH_LIST"])

    class BuildWithRecord(BuildExtension):
        """Builds each module on its own; an optional one that fails is recorded, not fatal."""

        def build_extension(self, ext) -> None:
            which = "cuda" if ext.name.endswith("_C_cuda") else "cpu"
            started = time.time()
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001 - recorded, re-raised when forced
                record[which]["reason"] = f"build failed: {type(exc).__name__}: {str(exc)[-2000:]}"
                if which == "cuda" and force_cuda:
                    raise
                self.warn(f"avfused: building {ext.name} failed; the backend will report: {record[which]['reason']}")
                self.failed.add(ext.name)
                return
            record[which].update(built=True, reason=None, seconds=round(time.time() - started, 1))

        failed: set = set()

        def copy_extensions_to_source(self) -> None:
            built = self.extensions
            self.extensions = [ext for ext in built if ext.name not in self.failed]  # nothing to copy for those
            try:
                super().copy_extensions_to_source()
            finally:
                self.extensions = built

        def run(self) -> None:
            super().run()
            target = Path(self.get_ext_fullpath("avfused._C_cpu")).parent / RECORD_NAME
            target.parent.mkdir(parents=True, exist_ok=True)
            record["max_jobs"] = os.environ.get("MAX_JOBS")
            target.write_text(json.dumps(record, indent=2) + "\n")

    cmdclass["build_ext"] = BuildWithRecord

if not ext_modules:  # still leave a record so the backend can say why it is missing
    (ROOT / "avfused" / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")

# every package under avfused/, and kernels/ as avfused.kernels (pyproject.toml maps the folder)
PACKAGES = [*find_packages(include=["avfused", "avfused.*"]), "avfused.kernels"]

setup(packages=PACKAGES, ext_modules=ext_modules, cmdclass=cmdclass)
