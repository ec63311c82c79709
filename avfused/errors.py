"""Every exception avfused raises on purpose, in one place.

Each carries a message that says what was expected and what came, so a user can act on it
without reading a traceback. They subclass the built-in exception a caller would catch
anyway (``ValueError`` for bad values, ``RuntimeError`` for an unavailable backend).
"""

from __future__ import annotations


class AvfusedError(Exception):
    """Base class of all avfused errors."""


class PathError(AvfusedError):
    """An error about one file or folder: ``path`` and ``reason``, shown as "path: reason".

    One argument is the text torch's DataLoader re-raises a worker's error with (a traceback ending in
    "avfused.errors.Name: path: reason"): the error keeps its class and its one-line message, instead of
    becoming a RuntimeError."""

    def __init__(self, path: object, reason: str | None = None) -> None:
        if reason is None:
            last = (str(path).strip().splitlines() or [""])[-1]
            path, _, reason = last.removeprefix(f"{type(self).__module__}.{type(self).__name__}: ").partition(": ")
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


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


class InputRangeError(InputError):
    """Video values lie far outside [0, 1]: 0-255 frames, or frames already normalised by mean and std."""


class InputRangeWarning(UserWarning):
    """Video values lie a little outside [0, 1] (e.g. interpolation overshoot); the model scores them as given."""


# --- configuration and weights -----------------------------------------------------------
class ConfigError(AvfusedError, ValueError):
    """A ModelConfig (or another config) holds values that cannot work together."""


class WeightShapeMismatchError(ConfigError):
    """Weights trained for one input size or preset were loaded into a model of another."""


class CheckpointError(AvfusedError, ValueError):
    """A checkpoint is missing, truncated, tampered with or written by an incompatible version."""


class DeviceUnavailableError(AvfusedError, RuntimeError):
    """A device that was asked for (``--device cuda``) does not exist here, or its name is not a device."""


# --- outputs -------------------------------------------------------------------------------
class OutputError(PathError):
    """Base class of errors about files a command writes; always names the path."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder already holds results that a command would overwrite (``--overwrite``, ``--resume``)."""


class OutputWriteError(OutputError, OSError):
    """A file could not be written (a full disk, no permission); the previous complete version is kept."""


# --- backends ------------------------------------------------------------------------------
class BackendUnavailableError(AvfusedError, RuntimeError):
    """A backend was forced (argument or AVFUSED_BACKEND) but cannot run here; says why and how to get it."""


class UnknownBackendError(AvfusedError, ValueError):
    """A backend name that avfused does not know."""


class MissingDependencyError(AvfusedError, ImportError):
    """A package that one part of avfused needs (PyAV for video files) is not installed; says how to get it."""


# --- export --------------------------------------------------------------------------------
class ExportError(AvfusedError, RuntimeError):
    """An export cannot run (unknown format, missing exporter or runtime) or its file does not reproduce the model."""


# --- data ----------------------------------------------------------------------------------
class DataError(PathError):
    """Base class of errors about input files and datasets; always names the path."""


class MediaNotFoundError(DataError, FileNotFoundError):
    """A video file, dataset root or metadata file that was asked for does not exist."""


class EmptyMediaError(DataError, ValueError):
    """A file has zero bytes, or a stream in it decodes to no frames or no samples."""


class MediaDecodeError(DataError, ValueError):
    """A file cannot be opened or decoded: not a media container, corrupt, or an unsupported codec."""


class TruncatedMediaError(MediaDecodeError):
    """A file ends before the duration its container declares (cut off while copying or writing)."""


class DegenerateFrameError(MediaDecodeError):
    """A video's frames are too small or too thin (e.g. 1x2000) for a square crop to show a face."""


class MissingStreamError(DataError, ValueError):
    """A file has no video track or no audio track, and the clip needs both."""


class MetadataError(DataError, ValueError):
    """A dataset's metadata (CSV or JSON) is missing, malformed or lacks a required column or key."""


class CacheError(DataError, ValueError):
    """A prepared clip cache is missing files, was written with other settings, or is corrupt."""


class UnreadableFilesError(DataError, ValueError):
    """Files a result needs could not be read; scoring the rest would change the result without a word."""


# --- evaluation protocols -------------------------------------------------------------------
class SplitNamesMissingError(DataError, ValueError):
    """A split file names files that the dataset does not hold (another dataset, or files removed)."""


class SplitMismatchError(DataError, ValueError):
    """A split file is not the one a checkpoint was trained with: its folds may test on training identities."""


class SplitFileError(DataError, ValueError):
    """A split file is missing, malformed, or its content does not match its hash."""


class SplitLeakError(DataError, ValueError):
    """Train, validation and test share files or identities, so test scores would measure memory."""


# --- folded models ---------------------------------------------------------------------------
class InferenceOnlyError(AvfusedError, RuntimeError):
    """A model folded for inference (avfused.inference) was run in train mode: it has no training behaviour."""
