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


def test_auto_trains_on_the_cpu_with_the_reference_and_infers_with_the_cpp_path(monkeypatch):
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device=None: None)  # every backend "runs"
    assert backends.resolve_backend("auto", "cpu") == "cuda"
    assert backends.resolve_backend("auto", "cpu", training=True) == "torch"
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
