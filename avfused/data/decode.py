"""Decode video files into model clips with PyAV.

Containers mp4, mkv, webm, avi (and anything else FFmpeg opens); video H.264, VP9, MPEG-4 ...;
audio AAC, Opus, PCM at any sample rate and channel count; constant or variable frame rate.

``read_clip(path, spec)`` returns a :class:`Clip` for the window [start, start + spec.seconds):
    video  float32 (T, 3, size, size) in [0, 1] RGB -- T = spec.frames frames picked evenly: frame i
           is the frame on screen at start + (i + 0.5) * seconds / T (the last frame whose timestamp
           is not after that instant, so variable frame rate is handled by timestamps, not counts);
    audio  float32 (S,) mono in [-1, 1] at spec.sample_rate, S = round(seconds * sample_rate): the same
           window, placed by the audio frames' timestamps, channels averaged, resampled with torchaudio.
Time 0 is the first video timestamp (``video stream start_time``); audio is placed on the same clock.

Short videos (the window reaches past the end of the file), ``spec.pad``:
    "hold"  frames after the last one repeat the last frame; audio after the end is silence (zeros);
    "loop"  the part of the file inside the window is repeated until the window is full.
``Clip.padded_seconds`` says how much of the window lay past the end of the video and
``Clip.audio_padded_seconds`` how much of it had no audio, so padding is never silent.

Truncated files: a read that reaches the end of the data raises TruncatedMediaError when the video
stops more than max(3 frames, 10 %) short of the duration the headers declare (stream duration, AVI
frame count, else container duration); a cut inside the header of an mp4 / mkv / AVI is reported
as truncated too. Shorter losses at the very end pass unnoticed.

``iter_windows(path, spec, hop)`` yields a Clip per window for sliding-window detection over long
videos: starts 0, hop, 2 hop, ... while a whole window fits, then one last window aligned to the end
of the file (so every instant is covered and no window is padded unless the file is shorter than one
window, which yields exactly one padded window). Each window is the Clip read_clip gives for its start;
by default they come from one decoding pass over the file (avfused.data.windows: each frame decoded
once), ``decode="seek"`` reads each on its own.

Degenerate frames: a video whose frames are under MIN_FRAME_SIDE pixels on a side, or more than
MAX_FRAME_ASPECT times longer than wide (or wide than long), raises DegenerateFrameError: its square
crop would be a sliver (a 1x2000 video: one pixel), not a face.

Bad input raises a named :mod:`avfused.errors` DataError with the path and the reason.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from avfused.data.faces import FaceCropper, FaceReport
from avfused.data.features import (
    audio_to_tensor,
    center_square,
    crop_resize,
    fit_length,
    frames_to_tensor,
    resample,
    samples_to_float,
    to_mono,
)
from avfused.data.pyav import av
from avfused.errors import (
    ConfigError,
    DegenerateFrameError,
    EmptyMediaError,
    MediaDecodeError,
    MediaNotFoundError,
    MissingStreamError,
    TruncatedMediaError,
)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
PAD_MODES = ("hold", "loop")
DECODE_MODES = ("stream", "seek")  # iter_windows: one pass over the file, or a seek per window
# seek this far before a window so the audio packets interleaved just before the key frame are read too
_SEEK_MARGIN_S = 0.5
# frames this small or this elongated give no usable square crop (see the module docstring)
MIN_FRAME_SIDE = 8
MAX_FRAME_ASPECT = 4.0


@dataclass(frozen=True)
class ClipSpec:
    """What a clip looks like: T frames of size x size, ``seconds`` of audio at ``sample_rate``.

    faces: "none" (centre square crop, for face-centred data) or a detector name of
    :mod:`avfused.data.faces` ("auto", "haar", "skin"); face_margin: the fraction of the face box
    added on each side before the square crop.
    """

    frames: int = 10
    image_size: int = 224
    sample_rate: int = 16000
    seconds: float = 3.0
    pad: str = "hold"
    faces: str = "none"
    face_margin: float = 0.25

    def __post_init__(self) -> None:
        if self.frames < 1 or self.image_size < 1 or self.sample_rate < 1:
            raise ConfigError(f"frames, image_size and sample_rate must be positive, got {self}")
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"seconds must be positive, got {self.seconds}")
        if self.pad not in PAD_MODES:
            raise ConfigError(f"pad must be one of {PAD_MODES}, got {self.pad!r}")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @classmethod
    def from_config(cls, config: object, **overrides: object) -> ClipSpec:
        """The clip a ModelConfig expects (frames, image_size, sample_rate, clip_seconds)."""
        base = {
            "frames": config.frames,
            "image_size": config.image_size,
            "sample_rate": config.sample_rate,
            "seconds": config.clip_seconds,
        }
        return cls(**{**base, **overrides})

    def replace(self, **changes: object) -> ClipSpec:
        return replace(self, **changes)


@dataclass
class MediaInfo:
    """What a file holds, read from its headers (duration from the container when it declares one)."""

    path: str
    container: str
    duration: float
    fps: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None


@dataclass
class Clip:
    """One window of a file in the model's input format (see the module docstring)."""

    video: torch.Tensor
    audio: torch.Tensor
    start: float
    seconds: float
    frame_times: list[float]
    source_fps: float
    source_sample_rate: int
    padded_seconds: float
    face_report: FaceReport | None = None
    audio_padded_seconds: float = 0.0  # window time with no decoded audio (silence filled in)
    path: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
def _check_link(path: Path) -> None:
    """A symbolic link loop or a link to nothing, named as such (not "no such file")."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MediaDecodeError(path, "is a symbolic link loop (too many levels of symbolic links)") from None
        if os.path.islink(path):
            raise MediaNotFoundError(path, f"is a symbolic link to {os.readlink(path)}, which does not exist") from None


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    _check_link(path)
    if not path.exists():
        raise MediaNotFoundError(path, "no such file")
    if path.is_dir():
        raise MediaDecodeError(path, "is a directory, expected a video file")
    if path.stat().st_size == 0:
        raise EmptyMediaError(path, "the file is empty (0 bytes)")
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        kind = _container_signature(path)
        if kind is not None:
            raise TruncatedMediaError(
                path, f"starts like {kind} but cannot be opened: truncated or corrupt ({exc.__class__.__name__})"
            ) from exc
        raise MediaDecodeError(path, f"not a readable media container ({exc.__class__.__name__}: {exc})") from exc


def _container_signature(path: Path) -> str | None:
    """The container a file's first bytes announce (mp4/mov, Matroska/WebM, AVI), or None."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "an MP4/QuickTime file"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "a Matroska/WebM file"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "an AVI file"
    return None


def _streams(container: av.container.InputContainer, path: object) -> tuple[av.VideoStream, av.AudioStream]:
    if not container.streams.video:
        raise MissingStreamError(path, "no video track (expected one video and one audio track)")
    if not container.streams.audio:
        raise MissingStreamError(path, "no audio track (expected one video and one audio track)")
    container.streams.video[0].thread_type = "AUTO"
    return container.streams.video[0], container.streams.audio[0]


def _declared_duration(container: av.container.InputContainer, vstream: av.VideoStream) -> float | None:
    """The video length the headers promise: the stream's duration or frame count (AVI keeps the count
    in its header when the index at the end is lost), else the container's duration."""
    declared = []
    if vstream.duration is not None and vstream.time_base is not None:
        declared.append(float(vstream.duration * vstream.time_base))
    if vstream.frames:
        declared.append(vstream.frames / _fps(vstream))
    if not declared and container.duration is not None:
        declared.append(container.duration / av.time_base)
    return max(declared) if declared else None


def _fps(vstream: av.VideoStream) -> float:
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    return float(rate) if rate else 25.0


def _origin(vstream: av.VideoStream) -> float:
    if vstream.start_time is not None and vstream.time_base is not None:
        return float(vstream.start_time * vstream.time_base)
    return 0.0


def probe(path: str | os.PathLike) -> MediaInfo:
    """Header facts of a file; raises the same named errors as :func:`read_clip`."""
    with _open(path) as container:
        vstream, astream = _streams(container, path)
        if vstream.duration is not None and vstream.time_base is not None:
            duration = float(vstream.duration * vstream.time_base)
        else:  # mkv / webm declare only the longest stream's length: find the video's end by decoding the tail
            declared = container.duration / av.time_base if container.duration is not None else 0.0
            tail = max(0.0, declared - 1.0)
            duration = _decode_span(container, vstream, astream, tail, math.inf, path, np.empty(0)).media_end
        return MediaInfo(
            path=str(path),
            container=container.format.name,
            duration=duration,
            fps=_fps(vstream),
            width=vstream.codec_context.width,
            height=vstream.codec_context.height,
            video_codec=vstream.codec_context.name,
            audio_codec=astream.codec_context.name,
            sample_rate=astream.codec_context.sample_rate,
            channels=astream.codec_context.channels,
        )


# ---------------------------------------------------------------------------------------------
def _audio_frame_array(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame -> float32 (C, n) whatever its sample format (planar or packed)."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    return samples_to_float(data)


@dataclass
class _Span:
    frame_times: list[float]
    frames: list[av.VideoFrame]  # or anything with VideoFrame's width, height and to_ndarray(format=)
    audio: np.ndarray  # (C, N) at the native rate; sample 0 at the span start
    covered_until: float  # window-relative end of the decoded audio
    sample_rate: int
    media_end: float  # end of the video (last frame time + one frame), when EOF was met; else inf
    fps: float


def _decode_span(
    container, vstream, astream, start: float, end: float, path: object, instants: np.ndarray | None = None
) -> _Span:
    """Decode [start, end) (seconds from the first video timestamp): the frame on screen at start and
    every frame after it before end -- or, given the sampling ``instants``, only the frames on screen
    at one of them (and the latest), so long high-resolution windows do not fill memory; the audio of
    the window at its native rate."""
    fps = _fps(vstream)
    origin = _origin(vstream)
    if start > 0:
        target = max(0.0, start - _SEEK_MARGIN_S) + origin
        container.seek(int(target / vstream.time_base), stream=vstream, backward=True, any_frame=False)

    rate = astream.codec_context.sample_rate or 0
    frame_times: list[float] = []
    frames: list[av.VideoFrame] = []
    chunks: list[tuple[float, np.ndarray]] = []
    last_video = -math.inf
    audio_end = -math.inf
    hit_eof = True
    decoded_video = False
    # AVI stores no presentation times: with B-frames the decoded pts are scrambled, so count frames
    # from the first packet (a key frame, shown first in its group) at the constant rate AVI implies
    count_frames = container.format.name == "avi"
    first_packet: float | None = None
    shown = 0
    try:
        for packet in container.demux(vstream, astream):
            if count_frames and first_packet is None and packet.stream is vstream and packet.dts is not None:
                first_packet = float(packet.dts * vstream.time_base) - origin
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    decoded_video = True
                    if count_frames and first_packet is not None:
                        t = first_packet + shown / fps
                    elif frame.time is not None:
                        t = frame.time - origin
                    else:
                        t = last_video + 1.0 / fps
                    shown += 1
                    last_video = t
                    if t < end:
                        if t <= start:  # keep only the frame on screen at the window start
                            frame_times, frames = [], []
                        elif instants is not None and frames and not _shown_at(instants, frame_times[-1], t):
                            frame_times.pop()
                            frames.pop()
                        frame_times.append(t)
                        frames.append(frame)
                else:
                    rate = frame.sample_rate
                    t = frame.time - origin if frame.time is not None else max(audio_end, start)
                    audio_end = t + frame.samples / rate
                    if audio_end > start and t < end:
                        chunks.append((t, _audio_frame_array(frame)))
            if last_video >= end and audio_end >= end:
                hit_eof = False
                break
    except av.FFmpegError as exc:
        where = f"after {max(last_video, 0.0):.3f} s" if decoded_video else "before the first frame"
        raise MediaDecodeError(path, f"corrupt or truncated data {where} ({exc})") from exc

    if not decoded_video:
        declared = _declared_duration(container, vstream)
        if declared:
            raise TruncatedMediaError(path, f"the container declares {declared:.3f} s but no video frame decodes")
        raise EmptyMediaError(path, "the video track holds no decodable frames")
    if not frames:
        raise EmptyMediaError(path, f"no video frame at or after {start:.3f} s (the video ends at {last_video:.3f} s)")
    if rate <= 0 or audio_end == -math.inf:
        raise EmptyMediaError(path, "the audio track holds no decodable samples")

    media_end = last_video + 1.0 / fps if hit_eof else math.inf
    if hit_eof:
        _check_not_truncated(container, vstream, media_end, fps, path)
        if start >= media_end:
            ends = f"(the video ends at {media_end:.3f} s)"
            raise EmptyMediaError(path, f"no video frame at or after {start:.3f} s {ends}")

    stop = end if math.isfinite(end) else max(audio_end, start)
    covered = min(audio_end, end) - start
    return _Span(frame_times, frames, _place_audio(chunks, start, stop, rate), covered, rate, media_end, fps)


def _place_audio(chunks: list[tuple[float, np.ndarray]], start: float, stop: float, rate: int) -> np.ndarray:
    """Audio chunks (time, (C, n)) -> (C, ceil((stop - start) * rate)) from ``start``, zeros where none lies."""
    channels = chunks[0][1].shape[0] if chunks else 1
    audio = np.zeros((channels, int(math.ceil((stop - start) * rate))), dtype=np.float32)
    for t, data in chunks:
        offset = int(round((t - start) * rate))
        lo, hi = max(offset, 0), min(offset + data.shape[1], audio.shape[1])
        if hi > lo and data.shape[0] == channels:
            audio[:, lo:hi] = data[:, lo - offset : hi - offset]
    return audio


def _shown_at(instants: np.ndarray, shown: float, replaced: float) -> bool:
    """Whether a frame on screen from ``shown`` until ``replaced`` is on screen at any of ``instants``."""
    return bool(np.any((instants >= shown) & (instants < replaced)))


def _check_not_truncated(container, vstream, media_end: float, fps: float, path: object) -> None:
    declared = _declared_duration(container, vstream)
    if declared is None or not math.isfinite(declared):
        return
    # a couple of frames of slack: containers round durations and B-frame delay shifts the last pts
    missing = declared - media_end
    if missing > max(3.0 / fps, 0.1 * declared):
        raise TruncatedMediaError(
            path, f"the container declares {declared:.3f} s but the video ends at {media_end:.3f} s"
        )


# ---------------------------------------------------------------------------------------------
def _pick(span: _Span, start: float, spec: ClipSpec) -> tuple[list[int], float, float]:
    """Indices of the frames on screen at the T sampling instants, the content end (window-relative
    end of the file inside the window) and the padded seconds."""
    content = min(span.media_end, start + spec.seconds) - start
    content = max(content, 1.0 / span.fps)
    padded = spec.seconds - content
    padded = padded if padded > 1e-6 else 0.0  # float noise of window arithmetic is not padding
    times = np.asarray(span.frame_times)
    picks = []
    for i in range(spec.frames):
        offset = (i + 0.5) * spec.seconds / spec.frames  # the instants of _instants()
        if spec.pad == "loop" and padded > 0:
            offset = math.fmod(offset, content)
        picks.append(max(int(np.searchsorted(times, start + offset, side="right")) - 1, 0))
    return picks, content, padded


def _window_audio(span: _Span, spec: ClipSpec, content: float) -> np.ndarray:
    native = to_mono(span.audio)
    audio = resample(native, span.sample_rate, spec.sample_rate)
    if spec.pad == "loop" and content < spec.seconds:
        have = min(audio.shape[0], int(round(content * spec.sample_rate)))
        if have > 0:
            audio = np.tile(audio[:have], int(math.ceil(spec.num_samples / have)))
    return fit_length(audio, spec.num_samples)


def _audio_gap(span: _Span, spec: ClipSpec) -> float:
    gap = spec.seconds - max(span.covered_until, 0.0)
    return gap if gap > 1e-3 else 0.0


def _crop(images: np.ndarray, spec: ClipSpec) -> tuple[np.ndarray, FaceReport | None]:
    if spec.faces == "none":
        box = center_square(images[0])
        return np.stack([crop_resize(im, box, spec.image_size) for im in images]), None
    return FaceCropper(spec.faces, margin=spec.face_margin)(images, spec.image_size)


def _check_frame_shape(width: int, height: int, path: object) -> None:
    side, long = min(width, height), max(width, height)
    if side < MIN_FRAME_SIDE or long > MAX_FRAME_ASPECT * side:
        raise DegenerateFrameError(
            path,
            f"frames are {width}x{height}: a square crop would be {side}x{side} pixels of it; avfused needs at least "
            f"{MIN_FRAME_SIDE} pixels a side and an aspect ratio up to {MAX_FRAME_ASPECT:g}:1",
        )


def _clip_from_span(span: _Span, start: float, spec: ClipSpec, path: object) -> Clip:
    _check_frame_shape(span.frames[0].width, span.frames[0].height, path)
    picks, content, padded = _pick(span, start, spec)
    cache: dict[int, np.ndarray] = {}
    for index in picks:
        if index not in cache:
            cache[index] = span.frames[index].to_ndarray(format="rgb24")
    images = np.stack([cache[i] for i in picks])
    crops, report = _crop(images, spec)
    audio = _window_audio(span, spec, content)
    return Clip(
        video=frames_to_tensor(crops),
        audio=audio_to_tensor(audio),
        start=start,
        seconds=spec.seconds,
        frame_times=[span.frame_times[i] for i in picks],
        source_fps=span.fps,
        source_sample_rate=span.sample_rate,
        padded_seconds=padded,
        face_report=report,
        audio_padded_seconds=0.0 if spec.pad == "loop" and content < spec.seconds else _audio_gap(span, spec),
        path=str(path),
    )


def _instants(start: float, spec: ClipSpec) -> np.ndarray | None:
    """The T sampling instants of a window; None under "loop" padding, where they wrap to frames that
    are only known at the end of the file."""
    if spec.pad == "loop":
        return None
    return start + (np.arange(spec.frames) + 0.5) * spec.seconds / spec.frames


def read_clip(path: str | os.PathLike, spec: ClipSpec | None = None, *, start: float = 0.0, **overrides) -> Clip:
    """Decode the window [start, start + seconds) of ``path`` into a :class:`Clip`.

    ``spec`` defaults to ``ClipSpec()`` (the small model's input); keyword ``overrides`` replace its
    fields (``read_clip(p, frames=4, image_size=96, seconds=1.0)``).
    """
    spec = (spec or ClipSpec()).replace(**overrides) if overrides else (spec or ClipSpec())
    if start < 0 or not math.isfinite(start):
        raise ConfigError(f"start must be a finite time >= 0, got {start}")
    with _open(path) as container:
        vstream, astream = _streams(container, path)
        span = _decode_span(container, vstream, astream, start, start + spec.seconds, path, _instants(start, spec))
        return _clip_from_span(span, start, spec, path)


def window_starts(duration: float, seconds: float, hop: float, slack: float = 0.0) -> list[float]:
    """Window starts covering [0, duration): 0, hop, ... while a window fits, then one aligned to the end
    unless less than ``slack`` seconds (a frame: container durations round up) would stay uncovered."""
    if hop <= 0:
        raise ConfigError(f"hop must be positive, got {hop}")
    if duration <= seconds + slack:
        return [0.0]
    starts = []
    t = 0.0
    while t + seconds <= duration + 1e-9:
        starts.append(round(t, 9))
        t += hop
    last = duration - seconds
    if starts[-1] + seconds < duration - max(slack, 1e-6):
        starts.append(round(last, 9))
    return starts


def iter_windows(
    path: str | os.PathLike,
    spec: ClipSpec | None = None,
    *,
    hop: float | None = None,
    decode: str = "stream",
    **overrides,
) -> Iterator[Clip]:
    """Yield a Clip per sliding window (see the module docstring); ``hop`` defaults to the window
    length (no overlap). ``decode="stream"`` reads the file in one pass (avfused.data.windows);
    ``"seek"`` seeks to every window's start and decodes it on its own, as read_clip does."""
    spec = (spec or ClipSpec()).replace(**overrides) if overrides else (spec or ClipSpec())
    if decode not in DECODE_MODES:
        raise ConfigError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    hop = spec.seconds if hop is None else hop
    info = probe(path)
    starts = window_starts(info.duration, spec.seconds, hop, slack=1.0 / info.fps)
    if decode == "stream":
        from avfused.data.windows import stream_windows  # here: that module builds on this one

        yield from stream_windows(path, spec, starts)
        return
    with _open(path) as container:
        vstream, astream = _streams(container, path)
        for start in starts:
            span = _decode_span(container, vstream, astream, start, start + spec.seconds, path, _instants(start, spec))
            yield _clip_from_span(span, start, spec, path)
