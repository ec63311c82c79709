"""Every fused kernel once on a small CUDA input, forward and backward: what compute-sanitizer checks.

    compute-sanitizer --tool memcheck python benchmarks/gpu_kernels_once.py

Each op runs with each backend that has a kernel for it on CUDA (triton, and the extension where its
EXT_DEVICES says so), in float32 and, for Triton, bfloat16. Odd sizes, batch 1 and 3. Prints one line
per run and exits 1 if any raised; memory errors are what the sanitizer reports around it.
"""

from __future__ import annotations

import sys
import traceback

import torch

from avfused import backends
from avfused.ops import audio_frontend_stem, conv_mlp, joint_token_attention, large_kernel_attention


def _inputs(op: str, batch: int) -> list[torch.Tensor]:
    """Small, odd-sized inputs of ``op`` for ``batch`` clips, on the GPU."""
    if op == "audio_frontend_stem":
        return [torch.randn(batch, 1003), torch.rand(12) * 3000, torch.rand(12) * 1500, torch.randn(5, 12, 7) / 4]
    if op == "joint_token_attention":
        return [torch.randn(batch, 37, 49), torch.randn(37, 49), 1 + 0.1 * torch.randn(49), 0.1 * torch.randn(49),
                torch.randn(49, 49) / 7, 0.1 * torch.randn(49)]
    if op == "large_kernel_attention":
        c = 6
        return [torch.randn(batch * 2, c, 9, 11), torch.randn(c, 1, 5, 5) / 5, torch.randn(c),
                torch.randn(c, 1, 7, 7) / 7, torch.randn(c), torch.randn(c, c) / c**0.5, torch.randn(c)]
    c, e = 5, 20
    return [torch.randn(batch * 2, c, 9, 11), torch.randn(e, c) / c**0.5, torch.randn(e), torch.randn(e, 1, 3, 3) / 3,
            torch.randn(e), torch.randn(c, e) / e**0.5, torch.randn(c)]


KWARGS = {"audio_frontend_stem": {"kernel_size": 63, "log_eps": 1e-2}}


def run_once(module, backend: str, dtype: torch.dtype, batch: int) -> None:
    op = module.OP
    inputs = [t.cuda().to(dtype).requires_grad_() for t in _inputs(op, batch)]
    out = getattr(module, backend)(*inputs, **KWARGS.get(op, {}))
    out.float().square().sum().backward()
    torch.cuda.synchronize()


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_kernels_once: no CUDA device")
        return 1
    failures = 0
    for module in (audio_frontend_stem, joint_token_attention, large_kernel_attention, conv_mlp):
        for backend, name in (("triton", "triton"), ("ext", "cuda")):
            runs = backends.unavailable_reason(name, "cuda") is None and backends.implements(name, module.OP, "cuda")
            if not runs:
                print(f"{module.OP} {backend}: no kernel here, skipped")
                continue
            dtypes = (torch.float32, torch.bfloat16) if backend == "triton" else (torch.float32,)
            for dtype in dtypes:
                for batch in (1, 3):
                    try:
                        run_once(module, backend, dtype, batch)
                        print(f"{module.OP} {backend} {dtype} batch {batch}: ok")
                    except Exception:  # noqa: BLE001 - every kernel gets its turn; the failure is printed
                        failures += 1
                        print(f"{module.OP} {backend} {dtype} batch {batch}: FAILED")
                        traceback.print_exc()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
