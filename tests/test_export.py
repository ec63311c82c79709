"""Export: `avfused export` writes ONNX and torch.export files that onnxruntime / torch.export.load run with the
checkpoint's eval-mode outputs (dynamic batch, input checks); the exportable audio pooling equals adaptive
pooling bit for bit; ModelOutput is a pytree, so torch.export takes the model as it is."""

import warnings

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
from helpers import random_batch, tiny_config

from avfused import ModelOutput, SingleStreamNet, reference
from avfused.checkpoint import save_checkpoint
from avfused.cli import main
from avfused.errors import ExportError
from avfused.export import export_model, run_exported

pytestmark = pytest.mark.usefixtures("one_thread")

# one stage keeps the two exports to seconds; its audio map (240) is pooled to 147 values: no divisor
CONFIG = tiny_config(widths=(4,), depths=(1,))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint whose batch-norm statistics are not the initial ones (eval mode must use them)."""
    torch.manual_seed(0)
    model = SingleStreamNet(CONFIG, backend="torch")
    with torch.no_grad():
        for _ in range(3):
            model(*random_batch(CONFIG, 4))
    path = tmp_path_factory.mktemp("export") / "model.safetensors"
    save_checkpoint(path, CONFIG, model.state_dict())
    return path, model.eval()


@pytest.fixture(scope="module")
def onnx_file(checkpoint):
    path, _ = checkpoint
    assert main(["export", str(path), "--format", "onnx", "--threads", "1"]) == 0
    return path.with_suffix(".onnx")


@pytest.fixture(scope="module")
def torch_file(checkpoint):
    path, _ = checkpoint
    out = path.parent / "program.pt2"
    assert main(["export", str(path), "--format", "torch", "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def torch_program(torch_file):
    return torch.export.load(str(torch_file)).module()


def _expected(model, video, audio):
    with torch.no_grad():
        out = model(video, audio)
    return [out.clip.numpy(), out.visual.numpy(), out.audio.numpy()]


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_file_runs_in_onnxruntime_with_the_checkpoints_outputs(checkpoint, onnx_file, batch):
    _, model = checkpoint
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["video", "audio"]
    assert session.get_inputs()[0].shape[1:] == [CONFIG.frames, 3, CONFIG.image_size, CONFIG.image_size]
    video, audio = random_batch(CONFIG, batch)
    clip, visual, audio_logits, finite = session.run(None, {"video": video.numpy(), "audio": audio.numpy()})
    for got, want in zip((clip, visual, audio_logits), _expected(model, video, audio), strict=True):
        assert got.shape == (batch, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    assert finite.tolist() == [True] * batch


def test_onnx_file_flags_non_finite_clips_and_rejects_wrong_shapes(onnx_file):
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    video, audio = random_batch(CONFIG, 3)
    video[1, 0, 0, 0, 0] = float("nan")
    audio[2, 5] = float("inf")
    *_, finite = session.run(None, {"video": video.numpy(), "audio": audio.numpy()})
    assert finite.tolist() == [True, False, False]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"video": video[:, :2].numpy(), "audio": audio.numpy()})


@pytest.mark.parametrize("batch", [1, 4])
def test_torch_file_loads_with_torch_export_and_gives_the_checkpoints_outputs(checkpoint, torch_program, batch):
    _, model = checkpoint
    video, audio = random_batch(CONFIG, batch)
    got = torch_program(video, audio)
    for value, want in zip(got, _expected(model, video, audio), strict=True):
        np.testing.assert_allclose(value.detach().numpy(), want, rtol=0, atol=TOLERANCE)


def test_torch_file_keeps_the_input_checks(torch_program):
    video, audio = random_batch(CONFIG, 2)
    bad = video.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="video holds NaN"):
        torch_program(bad, audio)
    with pytest.raises(RuntimeError, match="outside"):
        torch_program(video * 255, audio)  # 0-255 frames
    with pytest.raises(Exception, match="Guard failed"):
        torch_program(video[:, :2], audio)


def test_run_exported_reads_both_formats(checkpoint, onnx_file, torch_file):
    _, model = checkpoint
    video, audio = random_batch(CONFIG, 2)
    want = _expected(model, video, audio)
    for path in (onnx_file, torch_file):
        got = run_exported(path, video, audio)
        for head, expected in zip(("clip", "visual", "audio"), want, strict=True):
            np.testing.assert_allclose(got[head], expected, rtol=0, atol=TOLERANCE)


def test_export_refuses_what_it_cannot_do(checkpoint, tmp_path):
    _, model = checkpoint
    with pytest.raises(ExportError, match="format"):
        export_model(model, tmp_path / "m.bin", format="tflite")
    with pytest.raises(ExportError, match="at least 2"):
        export_model(model, tmp_path / "m.pt2", format="torch", batch=1)
    with pytest.raises(ExportError, match=r"\.onnx or \.pt2"):
        run_exported(tmp_path / "m.bin", *random_batch(CONFIG, 1))


def test_model_output_is_a_pytree_with_its_none_fields_dropped():
    clip, visual, audio = torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 2.0)
    leaves, spec = pytree.tree_flatten(ModelOutput(clip, visual, audio))
    assert len(leaves) == 3
    rebuilt = pytree.tree_unflatten([leaf + 1 for leaf in leaves], spec)
    assert isinstance(rebuilt, ModelOutput) and rebuilt.mismatch is None
    assert torch.equal(rebuilt.audio, audio + 1)


# ---- the exportable audio-token pooling -------------------------------------------------------
LENGTHS = list(range(1, 260)) + [499, 500, 1000, 2000, 4000, 12000]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_pooling_equals_adaptive_pooling_bit_for_bit(dtype):
    for length in LENGTHS:
        signal = torch.randn(2, length).to(dtype)
        for size in (7, 98, 147, 196):
            expected = F.adaptive_avg_pool1d(signal[:, None], size)[:, 0]
            got = reference.adaptive_average_pool_by_gather(signal, size)
            assert got.dtype == dtype
            assert torch.equal(got, expected), (length, size)


def test_gather_pooling_has_adaptive_poolings_gradient():
    signal = torch.randn(3, 250, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 147, dtype=torch.float64)
    (grad_gather,) = torch.autograd.grad((reference.adaptive_average_pool_by_gather(signal, 147) * weights).sum(),
                                         signal)  # fmt: skip
    (grad_adaptive,) = torch.autograd.grad((F.adaptive_avg_pool1d(signal[:, None], 147)[:, 0] * weights).sum(), signal)
    torch.testing.assert_close(grad_gather, grad_adaptive, rtol=1e-12, atol=1e-12)


def test_audio_tokens_export_with_the_torchscript_onnx_exporter(tmp_path):
    """That exporter refuses adaptive_avg_pool1d to a size that does not divide the input; traced, the
    tokens come from the gather pooling instead."""

    class Tokens(torch.nn.Module):
        def forward(self, signal):
            return reference.audio_to_tokens(signal, 4, 49)

    signal = torch.randn(2, 500)
    path = tmp_path / "tokens.onnx"
    with warnings.catch_warnings():  # the legacy exporter, asked for on purpose, warns that it is legacy
        warnings.simplefilter("ignore")
        torch.onnx.export(Tokens(), (signal,), str(path), dynamo=False, input_names=["signal"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (tokens,) = session.run(None, {"signal": signal.numpy()})
    np.testing.assert_array_equal(tokens, Tokens()(signal).numpy())
