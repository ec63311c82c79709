"""Triton kernels of avfused, installed as ``avfused.kernels``; one module per fused op.

Nothing is imported here, so ``import avfused.kernels`` never needs triton; the op modules in
``avfused.ops.triton_*`` import the kernel modules they launch.
"""
