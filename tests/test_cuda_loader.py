"""The extension loader says why the "cuda" backend is missing, and the package works without it."""

from __future__ import annotations

import json

import torch

from avfused import _extension, backends, reference


def test_missing_module_reason_quotes_the_build_record(tmp_path, monkeypatch):
    record = tmp_path / "_build_info.json"
    record.write_text(json.dumps({"cpu": {"built": False, "reason": "skipped: AVFUSED_SKIP_BUILD=1 at install time"}}))
    monkeypatch.setattr(_extension, "RECORD_PATH", record)
    reason = _extension._import("avfused._C_not_there", "cpu")
    assert "AVFUSED_SKIP_BUILD=1" in reason and "pip install --no-build-isolation -e ." in reason


def test_missing_record_says_never_built(tmp_path, monkeypatch):
    monkeypatch.setattr(_extension, "RECORD_PATH", tmp_path / "absent.json")
    assert "never built" in _extension._import("avfused._C_not_there", "cuda")


def test_loaded_module_has_no_reason(tmp_path, monkeypatch):
    record = tmp_path / "_build_info.json"
    record.write_text(json.dumps({"cpu": {"built": True, "reason": None}}))
    monkeypatch.setattr(_extension, "RECORD_PATH", record)
    assert _extension._import("avfused.reference", "cpu") is None


def test_a_module_recorded_as_not_built_is_not_loaded(tmp_path, monkeypatch):
    """A rebuild that skipped CUDA leaves the earlier _C_cuda file beside the new _C_cpu; loading it would
    register kernels for changed schemas, which aborts the process: the record's word is final."""
    record = tmp_path / "_build_info.json"
    record.write_text(json.dumps({"cpu": {"built": True}, "cuda": {"built": False,
                                                                   "reason": "skipped: AVFUSED_SKIP_CUDA_BUILD=1"}}))
    monkeypatch.setattr(_extension, "RECORD_PATH", record)
    imported = []
    monkeypatch.setattr(_extension.importlib, "import_module", lambda name: imported.append(name))
    reason = _extension._import("avfused.reference", "cuda")
    assert imported == [] and "AVFUSED_SKIP_CUDA_BUILD=1" in reason


def test_auto_backend_falls_back_when_extension_unavailable(monkeypatch):
    def only_torch(name, device=None):
        return None if name == "torch" else "not built"

    monkeypatch.setattr(backends, "unavailable_reason", only_torch)
    assert backends.resolve_backend("auto", "cpu") == "torch"
    wave = torch.randn(1, 400)
    low, band = torch.full((4,), 100.0), torch.full((4,), 200.0)
    out = backends.get_op("audio_frontend_stem", "auto", "cpu")(wave, low, band, torch.randn(2, 4, 7), kernel_size=31)
    assert out.shape == reference.audio_frontend_stem(wave, low, band, torch.randn(2, 4, 7), kernel_size=31).shape
