"""Backend choice: per call, forced with an argument or AVFUSED_BACKEND, loud when forced, quiet fallback."""

import pytest
import torch

from avfused import SingleStreamNet, available_backends, backends, reference
from avfused.errors import BackendUnavailableError, UnknownBackendError
from tests.helpers import EXT_CPU, TRITON, random_batch, tiny_config


def test_torch_is_always_available_and_others_explain_themselves():
    status = available_backends("cpu")
    assert set(status) == {"torch", "triton", "cuda"}
    assert status["torch"] is None
    assert all(reason is None or isinstance(reason, str) and reason for reason in status.values())


def test_unknown_backend_names_fail(monkeypatch):
    with pytest.raises(UnknownBackendError, match="bogus"):
        backends.resolve_backend("bogus", "cpu")
    monkeypatch.setenv("AVFUSED_BACKEND", "nope")
    with pytest.raises(UnknownBackendError, match="AVFUSED_BACKEND"):
        backends.resolve_backend(None, "cpu")


def test_forced_but_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: f"{name} is switched off here")
    with pytest.raises(BackendUnavailableError, match="triton is switched off here.*fall back"):
        backends.resolve_backend("triton", "cpu")
    monkeypatch.setenv("AVFUSED_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="'cuda' was forced"):
        backends.resolve_backend(None, "cpu")


def test_auto_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None if name == "torch" else "no")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    assert backends.get_op("joint_token_attention", "auto", "cpu") is reference.joint_token_attention


def test_environment_variable_forces_the_reference(monkeypatch):
    monkeypatch.setenv("AVFUSED_BACKEND", "torch")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    config = tiny_config()
    model = SingleStreamNet(config).eval()
    video, audio = random_batch(config, 1)
    expected = SingleStreamNet(config, backend="torch").eval()
    expected.load_state_dict(model.state_dict())
    assert torch.equal(model(video, audio).clip, expected(video, audio).clip)


def test_model_rejects_unknown_backend():
    with pytest.raises(UnknownBackendError):
        SingleStreamNet(tiny_config(), backend="opencl")


def test_auto_trains_on_the_cpu_with_the_cpp_ops_that_measured_faster(monkeypatch):
    """Inference: the C++ path for every op. Training: the C++ front end, large-kernel attention and conv MLP
    (their forward + backward measured 5x, 10x, 9x the reference), the reference for the token attention
    (0.9x); a forced backend stays forced, and GPUs train fused."""
    from avfused.ops import audio_frontend_stem, conv_mlp, large_kernel_attention

    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None)  # every backend "runs"
    assert backends.op_backends("cpu") == dict.fromkeys(backends.FUSED_OPS + backends.LAYER_OPS, "cuda")
    assert backends.op_backends("cpu", training=True) == {
        "audio_frontend_stem": "cuda", "joint_token_attention": "torch", "large_kernel_attention": "cuda",
        "conv_mlp": "cuda", **dict.fromkeys(backends.LAYER_OPS, "cuda"),
    }  # fmt: skip
    for module in (audio_frontend_stem, large_kernel_attention, conv_mlp):
        assert backends.get_op(module.OP, "auto", "cpu", training=True) is module.ext
    assert backends.get_op("joint_token_attention", "auto", "cpu", training=True) is reference.joint_token_attention
    assert backends.get_op("conv_mlp", "torch", "cpu", training=True) is reference.conv_mlp
    assert backends.resolve_backend("cuda", "cpu", training=True) == "cuda"  # forced stays forced
    assert backends.resolve_backend("auto", "cuda", training=True) == "cuda"  # GPUs train fused


def test_module_op_is_training_only_in_train_mode_under_autograd(monkeypatch):
    seen = []
    monkeypatch.setattr(backends, "get_op", lambda op, backend, device, training=False: seen.append(training))
    module = torch.nn.Module()
    module.backend = "auto"
    backends.module_op("conv_mlp", module, torch.device("cpu"))
    with torch.no_grad():
        backends.module_op("conv_mlp", module, torch.device("cpu"))
    module.eval()
    backends.module_op("conv_mlp", module, torch.device("cpu"))
    assert seen == [True, False, False]


@pytest.mark.parametrize("target", [TRITON])
def test_triton_is_available_where_the_tests_run(target):
    assert backends.unavailable_reason("triton", target.device) is None
    reason = backends.unavailable_reason("triton", "mps")
    assert reason is not None and "mps" in reason


@pytest.mark.parametrize("target", [EXT_CPU])
def test_the_extension_reports_its_cpu_half_available(target):
    assert available_backends("cpu")["cuda"] is None
    assert backends.resolve_backend("ext", "cpu") == "cuda"  # 'ext' names the same backend


def test_an_op_without_fused_backends_runs_the_reference():
    assert backends.op_module("audio_frontend") is None
    assert backends.get_op("audio_frontend", "torch", "cpu") is reference.audio_frontend


def test_bench_does_not_time_the_reference_as_the_gpu_cuda_backend(monkeypatch):
    from avfused.bench.variants import _reference_on_device

    for op in ("audio_frontend_stem", "joint_token_attention", "large_kernel_attention", "conv_mlp"):
        assert not _reference_on_device(op, "cuda", torch.device("cuda"))  # every fused op has CUDA kernels now
    conv_mlp = backends.op_module("conv_mlp")
    monkeypatch.setattr(conv_mlp, "EXT_DEVICES", ("cpu",))  # an op whose CUDA tensors would run the reference
    assert _reference_on_device("conv_mlp", "cuda", torch.device("cuda"))
    assert not _reference_on_device("conv_mlp", "cuda", torch.device("cpu"))
    assert not _reference_on_device("joint_token_attention", "cuda", torch.device("cuda"))


def test_auto_sends_each_op_to_the_first_backend_that_has_it(monkeypatch):
    """Per-op dispatch: an op the extension lacks on a device goes to triton there, else the reference."""
    from avfused.ops import conv_mlp, joint_token_attention

    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None)  # every backend "runs"
    monkeypatch.setattr(conv_mlp, "EXT_DEVICES", ("cpu",))
    assert backends.get_op("conv_mlp", "auto", "cuda") is conv_mlp.triton
    assert backends.get_op("joint_token_attention", "auto", "cuda") is joint_token_attention.ext
    assert backends.op_backends("cuda")["conv_mlp"] == "triton"
    monkeypatch.setattr(conv_mlp, "EXT_DEVICES", ())
    assert backends.get_op("conv_mlp", "auto", "cpu") is reference.conv_mlp  # on the CPU auto tries only cuda
    assert backends.op_backends("cpu") == {
        "audio_frontend_stem": "cuda", "joint_token_attention": "cuda", "large_kernel_attention": "cuda",
        "conv_mlp": "torch", **dict.fromkeys(backends.LAYER_OPS, "cuda"),
    }


def test_a_forced_backend_fails_loudly_for_an_op_it_lacks_on_the_device(monkeypatch):
    from avfused.ops import conv_mlp

    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None)
    monkeypatch.setattr(conv_mlp, "EXT_DEVICES", ("cpu",))
    with pytest.raises(BackendUnavailableError, match="no kernel for conv_mlp on cuda"):
        backends.get_op("conv_mlp", "cuda", "cuda")
    assert backends.get_op("conv_mlp", "ext", "cpu") is conv_mlp.ext


def test_compile_traces_the_first_call_of_a_fresh_process():
    """No import or logging inside the traced call: auto on the whole model, a forced backend on one block."""
    import subprocess
    import sys

    script = """
import torch
from avfused import ModelConfig, SingleStreamNet, available_backends
from avfused.nn import CAVLBlock
config = ModelConfig(widths=(4, 8), depths=(1, 1), frames=3, image_size=30, clip_seconds=0.06, sinc_filters=8,
                     sinc_kernel_size=31)
model = SingleStreamNet(config).eval()
video, audio = torch.rand(1, 3, 3, 30, 30), torch.randn(1, config.num_samples)
torch.compile(model, fullgraph=True, backend="eager")(video, audio)
forced = "cuda" if available_backends("cpu")["cuda"] is None else "torch"  # the C++ path where it is built
block = CAVLBlock(4, 3, config.num_tokens(0), backend=forced).eval()
torch.compile(block, fullgraph=True, backend="eager")(torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 240))
print("compiled")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-2000:]


def test_the_saavm_runs_its_fused_layers_only_where_its_backend_has_all_of_them(monkeypatch):
    """optional_module_op: auto's choice, a forced backend where it has the op, else None (the plain layers);
    a forced backend lacking a layer op is no error."""
    from avfused.nn.saavm import SAAVM, token_count
    from avfused.ops import video_expand_residual

    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None)  # every backend "runs"
    saavm = SAAVM(4, 2, token_count(2, 7, 7)).train()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert backends.optional_module_op("video_expand_residual", saavm, cpu) is video_expand_residual.ext
    saavm.backend = "triton"
    assert backends.optional_module_op("video_expand_residual", saavm, cpu) is video_expand_residual.triton
    saavm.backend = "torch"
    assert backends.optional_module_op("video_expand_residual", saavm, cpu) is None
    saavm.backend = "cuda"
    assert backends.optional_module_op("video_expand_residual", saavm, gpu) is None  # no CUDA kernel routed yet
    saavm.backend = "auto"
    assert backends.optional_module_op("video_expand_residual", saavm, gpu) is video_expand_residual.triton


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "refused"),
    [("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False), ("3.8.0", "2.4.6", False), ("3.10.1", "2.5.0", False)],
)
def test_the_interpreter_is_refused_where_triton_36_meets_numpy_24(monkeypatch, triton_version, numpy_version,
                                                                    refused):
    # seen: triton 3.6.0's interpreter with numpy 2.4.6 fails inside every kernel (TypeError: only 0-dimensional
    # arrays can be converted to Python scalars); with numpy 2.3.5, or triton 3.8.0, the kernels run
    triton = pytest.importorskip("triton")
    import numpy

    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(backends, "_reasons", {})  # the reasons are cached per process
    reason = backends.unavailable_reason("triton", "cpu")
    assert (reason is not None) == refused
    if refused:
        assert "numpy<2.4" in reason and triton_version in reason
