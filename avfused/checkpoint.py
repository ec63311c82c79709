"""Checkpoints: one safetensors file holding the weights, the optimizer's tensors, the ModelConfig and the
training state -- no pickle, so loading a stranger's checkpoint cannot run code.

File layout (``*.safetensors``):
    tensors   ``model.<name>``                 the model's state_dict (training-only probes included)
              ``optimizer.<param>.<key>``     each tensor in the optimizer's per-parameter state
              ``extra.<name>``                 other tensors (e.g. RNG states, uint8)
    metadata  ``format``  "avfused-checkpoint", ``version`` "1",
              ``config``  the ModelConfig as JSON,
              ``state``   the training state as JSON (epoch, step, scheduler, data position, metrics ...),
              ``optimizer`` the optimizer's param_groups and non-tensor state as JSON,
              ``calibration`` (optional) the decision thresholds chosen on the validation split, as JSON
                          (avfused.calibration; absent in checkpoints written before it existed),
              ``sha256``  digest of the header (less this field) and of every tensor byte.

Writing goes to a temporary file in the same folder, fsync, then ``os.replace``: a crash leaves either
the old checkpoint or the new one, never half of one (a killed process may leave its hidden temporary,
which ``remove_stale_temporaries`` deletes); a failed write raises OutputWriteError. Loading checks the
layout of every header entry and the digest, so a truncated, edited or foreign file raises
:class:`avfused.errors.CheckpointError` saying what is wrong -- never another exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from avfused.config import ModelConfig
from avfused.errors import CheckpointError, ConfigError, OutputWriteError

FORMAT = "avfused-checkpoint"
VERSION = "1"
_MODEL, _OPTIM, _EXTRA = "model.", "optimizer.", "extra."


@dataclass
class Checkpoint:
    """What a checkpoint holds, loaded on the CPU."""

    config: ModelConfig
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None = None
    state: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    path: str = ""
    calibration: dict | None = None


# ---- optimizer state <-> flat tensors + JSON ------------------------------------------------
def _split_optimizer(optimizer_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for param_id, entries in optimizer_state.get("state", {}).items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": optimizer_state.get("param_groups", []), "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], described: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        param_id, key = name[len(_OPTIM) :].split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in described.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    groups = []
    for group in described.get("param_groups", []):
        # JSON turned tuples (betas) into lists; optimizers expect the tuples back
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in group.items()})
    return {"state": state, "param_groups": groups}


# ---- digest -----------------------------------------------------------------------------------
# safetensors refuses headers above 100 MB; a larger length field is a corrupt or foreign file
MAX_HEADER_BYTES = 100_000_000


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entries(header: dict, path: object) -> None:
    """Every tensor entry is {"dtype": str, "shape": [sizes], "data_offsets": [begin, end]}; the metadata
    maps strings to strings. Anything else is a damaged header, named as one (not a KeyError later)."""
    for key, entry in header.items():
        if key == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise CheckpointError(f"{path}: the header's metadata is not a map of strings (damaged header)")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: header entry {key!r} is not a tensor description (damaged header)")
        offsets, shape = entry["data_offsets"], entry["shape"]
        if not (isinstance(entry["dtype"], str) and isinstance(shape, list) and all(map(_is_size, shape))):
            raise CheckpointError(f"{path}: header entry {key!r} has a malformed dtype or shape (damaged header)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))):
            raise CheckpointError(f"{path}: header entry {key!r} has malformed data offsets (damaged header)")
        if offsets[0] > offsets[1]:
            raise CheckpointError(f"{path}: header entry {key!r} ends before it starts (damaged header)")


def _parse(blob: bytes, path: object) -> tuple[dict, bytes]:
    """(header dict, data section) of a safetensors byte string, checking its layout and that nothing is cut off."""
    if len(blob) < 8:
        raise CheckpointError(f"{path}: {len(blob)} bytes is too short to be a checkpoint (truncated or empty)")
    if blob[8:9] not in (b"{", b""):
        raise CheckpointError(
            f"{path}: not a safetensors file (its header does not start with '{{'; it starts {blob[:16]!r}); "
            "not an avfused checkpoint"
        )
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: the header length field says {header_len} bytes (damaged or not a checkpoint)")
    if header_len > len(blob) - 8:
        raise CheckpointError(
            f"{path}: header declares {header_len} bytes but the file has {len(blob) - 8} after it (truncated)"
        )
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: the header is not valid JSON ({exc}); not an avfused checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object; not an avfused checkpoint")
    _check_entries(header, path)
    data = blob[8 + header_len :]
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    needed = max(ends, default=0)
    if needed != len(data):
        raise CheckpointError(
            f"{path}: the tensors need {needed} bytes of data but the file holds {len(data)} "
            f"({'truncated' if len(data) < needed else 'extra bytes appended'})"
        )
    return header, data


def _digest(header: dict, data: bytes) -> str:
    header = dict(header)
    metadata = dict(header.get("__metadata__") or {})
    metadata.pop("sha256", None)
    header["__metadata__"] = metadata
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    h.update(data)
    return h.hexdigest()


# ---- save / load --------------------------------------------------------------------------------
def _cpu_tensors(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (views, tied weights)
    return {prefix + name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` via a temporary file and os.replace (never a half-written file).

    A failed write (a full disk, no permission) raises OutputWriteError naming the path; the previous
    version of the file is left as it was."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise OutputWriteError(path, f"cannot write it ({exc.strerror or exc}); {kept}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of atomic_write_bytes that a killed process left in ``folder`` (those of
    live processes are kept); returns what was deleted."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict | None = None,
    state: dict | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    calibration: dict | None = None,
) -> None:
    """Write a checkpoint atomically. ``state`` and ``calibration`` must be JSON-serialisable (plain numbers,
    strings, lists)."""
    tensors = _cpu_tensors(_MODEL, model_state)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config.to_dict()),
        "state": json.dumps(state or {}),
    }
    if optimizer_state is not None:
        optim_tensors, described = _split_optimizer(optimizer_state)
        tensors.update(_cpu_tensors("", optim_tensors))
        metadata["optimizer"] = json.dumps(described)
    if calibration is not None:
        metadata["calibration"] = json.dumps(calibration)
    tensors.update(_cpu_tensors(_EXTRA, extra or {}))
    first = save_tensors(tensors, metadata=metadata)
    header, data = _parse(first, path)
    metadata["sha256"] = _digest(header, data)
    atomic_write_bytes(path, save_tensors(tensors, metadata=metadata))


def _metadata_json(metadata: dict, key: str, path: object) -> object:
    try:
        return json.loads(metadata[key])
    except KeyError:
        raise CheckpointError(f"{path}: the metadata has no {key!r} entry; not a complete avfused checkpoint") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and verify a checkpoint; raises CheckpointError when it is missing, truncated or altered."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return checkpoint_from_bytes(blob, path)


def checkpoint_from_bytes(blob: bytes, path: str | os.PathLike = "<bytes>") -> Checkpoint:
    """A checkpoint from the bytes of its file (``path`` names it in errors); verified as load_checkpoint does."""
    header, data = _parse(blob, path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    if metadata.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {metadata.get('version')!r}; this avfused reads {VERSION!r}")
    if metadata.get("sha256") != _digest(header, data):
        raise CheckpointError(f"{path}: the checksum does not match: the file was modified or corrupted after saving")
    try:
        tensors = load_tensors(blob)
    except Exception as exc:  # safetensors raises its own error type for a malformed layout
        raise CheckpointError(f"{path}: cannot read the tensors ({exc})") from None
    try:
        config = ModelConfig.from_dict(_metadata_json(metadata, "config", path))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: the stored ModelConfig is invalid ({exc})") from None
    model = {k[len(_MODEL) :]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    extra = {k[len(_EXTRA) :]: v for k, v in tensors.items() if k.startswith(_EXTRA)}
    optimizer = None
    if "optimizer" in metadata:
        optim_tensors = {k: v for k, v in tensors.items() if k.startswith(_OPTIM)}
        optimizer = _join_optimizer(optim_tensors, _metadata_json(metadata, "optimizer", path))
    state = _metadata_json(metadata, "state", path)
    calibration = _metadata_json(metadata, "calibration", path) if "calibration" in metadata else None
    return Checkpoint(config, model, optimizer, state, extra, str(path), calibration)


def load_model(path: str | os.PathLike, backend: str = "auto", device: str | torch.device = "cpu"):
    """The SingleStreamNet of a checkpoint, in eval mode on ``device``."""
    from avfused.model import SingleStreamNet

    checkpoint = load_checkpoint(path)
    model = SingleStreamNet(checkpoint.config, backend=backend)
    missing = set(model.state_dict()) ^ set(checkpoint.model_state)
    if missing:
        raise CheckpointError(f"{path}: weights do not match the stored config: {sorted(missing)[:5]} ...")
    model.load_state_dict(checkpoint.model_state)
    return model.to(device).eval()
