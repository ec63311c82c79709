"""Every exception avfused raises on purpose, in one place.

Each carries a message that says what was expected and what came, so a user can act on it
without reading a traceback. They subclass the built-in exception a caller would catch
anyway (``ValueError`` for bad values, ``RuntimeError`` for an unavailable backend).
"""

from __future__ import annotations


class AvfusedError(Exception):
    """Base class of all avfused errors."""


# --- model input -------------------------------------------------------------------------
class InputError(AvfusedError, ValueError):
    """A tensor given to a model or module does not fit what it expects."""


class InputRankError(InputError):
    """A tensor has the wrong number of dimensions."""


class InputShapeError(InputError):
    """A tensor has the right rank but a wrong size (channels, frames, samples, pixels)."""


class EmptyBatchError(InputShapeError):
    """A batch with zero clips (or images) was given: a size of zero where one is needed."""


class NonFiniteInputError(InputError):
    """A tensor holds NaN or infinite values."""


class InputDeviceError(InputError):
    """Tensors that must live together are on different devices, or on one a kernel cannot use."""


class InputDtypeError(InputError):
    """A tensor has a dtype the module or kernel does not accept."""


# --- configuration and weights -----------------------------------------------------------
class ConfigError(AvfusedError, ValueError):
    """A ModelConfig (or another config) holds values that cannot work together."""


class WeightShapeMismatchError(ConfigError):
    """Weights trained for one input size or preset were loaded into a model of another."""


class CheckpointError(AvfusedError, ValueError):
    """A checkpoint is missing, truncated, tampered with or written by an incompatible version."""


# --- backends ------------------------------------------------------------------------------
class BackendUnavailableError(AvfusedError, RuntimeError):
    """A backend was forced (argument or AVFUSED_BACKEND) but cannot run here; says why and how to get it."""


class UnknownBackendError(AvfusedError, ValueError):
    """A backend name that avfused does not know."""


# --- data ----------------------------------------------------------------------------------
class DataError(AvfusedError):
    """Base class of errors about input files and datasets; always names the path."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MediaNotFoundError(DataError, FileNotFoundError):
    """A video file, dataset root or metadata file that was asked for does not exist."""


class EmptyMediaError(DataError, ValueError):
    """A file has zero bytes, or a stream in it decodes to no frames or no samples."""


class MediaDecodeError(DataError, ValueError):
    """A file cannot be opened or decoded: not a media container, corrupt, or an unsupported codec."""


class TruncatedMediaError(MediaDecodeError):
    """A file ends before the duration its container declares (cut off while copying or writing)."""


class MissingStreamError(DataError, ValueError):
    """A file has no video track or no audio track, and the clip needs both."""


class MetadataError(DataError, ValueError):
    """A dataset's metadata (CSV or JSON) is missing, malformed or lacks a required column or key."""


class CacheError(DataError, ValueError):
    """A prepared clip cache is missing files, was written with other settings, or is corrupt."""


# --- evaluation protocols -------------------------------------------------------------------
class SplitNamesMissingError(DataError, ValueError):
    """A split file names files that the dataset does not hold (another dataset, or files removed)."""


class SplitMismatchError(DataError, ValueError):
    """A split file is not the one a checkpoint was trained with: its folds may test on training identities."""


# --- folded models ---------------------------------------------------------------------------
class InferenceOnlyError(AvfusedError, RuntimeError):
    """A model folded for inference (avfused.inference) was run in train mode: it has no training behaviour."""
