"""Every fused kernel once on a small CUDA input, forward and backward: what compute-sanitizer checks.

    compute-sanitizer --tool memcheck python benchmarks/gpu_kernels_once.py

Each op (the fused ops and the SAAVM's layer ops) runs with each backend that has a kernel for it on CUDA:
triton, and the extension wherever it has CUDA kernels registered, routed by its EXT_DEVICES or not yet (so
that kernels waiting for their first GPU run are checked too); in float32 and bfloat16 (the extension's
front end: float32 only). Odd sizes, batch 1 and 3. Prints one line per run and exits 1 if any raised;
memory errors are what the sanitizer reports around it.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import torch

from avfused import backends

OPS = backends.FUSED_OPS + backends.LAYER_OPS
C, E, IMAGES_PER_CLIP, LENGTH = 5, 20, 2, 91  # channels, conv-MLP hidden width, frames, audio length


def _inputs(op: str, batch: int) -> tuple[list[torch.Tensor], tuple]:
    """Small, odd-sized tensor inputs of ``op`` for ``batch`` clips (on the CPU) and its other arguments."""
    images = torch.randn(batch * IMAGES_PER_CLIP, C, 9, 11)
    audio = torch.randn(batch, C, LENGTH)
    video_tokens = torch.randn(batch, IMAGES_PER_CLIP * 2 * 2, 49)  # 9x11 maps in 7x7 windows: 2 x 2 per frame
    if op == "audio_frontend_stem":
        return [torch.randn(batch, 1003), torch.rand(12) * 3000, torch.rand(12) * 1500, torch.randn(5, 12, 7) / 4], ()
    if op == "joint_token_attention":
        return [torch.randn(batch, 37, 49), torch.randn(37, 49), 1 + 0.1 * torch.randn(49), 0.1 * torch.randn(49),
                torch.randn(49, 49) / 7, 0.1 * torch.randn(49)], ()
    if op == "large_kernel_attention":
        return [images, torch.randn(C, 1, 5, 5) / 5, torch.randn(C), torch.randn(C, 1, 7, 7) / 7, torch.randn(C),
                torch.randn(C, C) / C**0.5, torch.randn(C)], ()
    if op == "conv_mlp":
        return [images, torch.randn(E, C) / C**0.5, torch.randn(E), torch.randn(E, 1, 3, 3) / 3, torch.randn(E),
                torch.randn(C, E) / E**0.5, torch.randn(C)], ()
    depthwise = [torch.randn(C, 1, 3, 3) / 3, torch.randn(C)]
    if op == "video_squeeze_stats":
        return [images, *depthwise], ()
    if op == "video_squeeze_tokens":
        return [images, *depthwise, torch.randn(1, C) / C**0.5, torch.randn(1)], (IMAGES_PER_CLIP, 7)
    if op == "video_expand_residual":
        return [images, video_tokens, *depthwise, 1 + torch.rand(C)], (7,)
    conv3 = [torch.randn(C, C, 3) / (3 * C) ** 0.5, torch.randn(C)]
    if op == "audio_squeeze_stats":
        return [audio, *conv3], ()
    if op == "audio_squeeze_tokens":
        return [audio, *conv3, torch.randn(1, C, 9) / (9 * C) ** 0.5, torch.randn(1)], (IMAGES_PER_CLIP, 49)
    if op == "audio_expand_residual":
        return [audio, torch.randn(batch, IMAGES_PER_CLIP, 49), torch.randn(C, 1, 9) / 3, torch.randn(C),
                1 + torch.rand(C)], ()
    raise KeyError(op)


KWARGS = {"audio_frontend_stem": {"kernel_size": 63, "log_eps": 1e-2}}


def run_once(module, backend: str, dtype: torch.dtype, batch: int) -> None:
    op = module.OP
    tensors, arguments = _inputs(op, batch)
    inputs = [t.cuda().to(dtype).requires_grad_() for t in tensors]
    out = getattr(module, backend)(*inputs, *arguments, **KWARGS.get(op, {}))
    sum(o.float().square().sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
    torch.cuda.synchronize()


def _has_kernel(module, backend: str) -> bool:
    """Whether ``backend`` has a CUDA kernel for the op here: Triton where it runs, the extension where its
    op has a CUDA implementation registered (routed or not)."""
    if backend == "triton":
        return backends.unavailable_reason("triton", "cuda") is None and backends.implements("triton", module.OP,
                                                                                             "cuda")
    return backends.unavailable_reason("cuda", "cuda") is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"avfused_ext::{module.OP}", "CUDA")


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_kernels_once: no CUDA device")
        return 1
    failures = 0
    # the extension's hand-written kernels first: under a step's time limit they matter most (Triton's masks)
    for backend in ("ext", "triton"):
        for op in OPS:
            module = importlib.import_module(f"avfused.ops.{op}")
            if not _has_kernel(module, backend):
                print(f"{op} {backend}: no kernel here, skipped")
                continue
            dtypes = (torch.float32,) if (backend, op) == ("ext", "audio_frontend_stem") else (torch.float32,
                                                                                              torch.bfloat16)
            for dtype in dtypes:
                for batch in (1, 3):
                    try:
                        run_once(module, backend, dtype, batch)
                        print(f"{op} {backend} {dtype} batch {batch}: ok")
                    except Exception:  # noqa: BLE001 - every kernel gets its turn; the failure is printed
                        failures += 1
                        print(f"{op} {backend} {dtype} batch {batch}: FAILED")
                        traceback.print_exc()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
