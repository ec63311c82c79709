"""Sliding windows of a video file from one decoding pass: each frame is decoded at most once.

``stream_windows(path, spec, starts)`` yields, for each window start (ascending seconds), the Clip that
``read_clip(path, spec, start=start)`` gives -- video (T, 3, size, size), audio (S,), frame times, padding
and face report alike -- but reads the file once instead of seeking back to a key frame for every window:

- video and audio are decoded in file order (the video decoder's threads on); a window is cut as soon as
  both have passed its end (or the video has passed it by ``AUDIO_WAIT_S``: the audio track ended);
- a video packet whose frame no window can pick (judged by its presentation time) is decoded only when
  other frames refer to it: FFmpeg skips non-reference frames on request (most B-frames are such);
- only the frames on screen at some window's sampling instants stay in memory (under ``pad="loop"``,
  which wraps to frames known only at the end, every frame of a pending window), and a frame is converted
  to RGB once, when the first window uses it; other frames are never converted;
- audio is kept from the earliest pending window's start on;
- when the next window starts more than ``SEEK_GAP_S`` after the decoded position (a hop much longer
  than the window), the pass seeks there as read_clip does rather than decoding the gap.

One difference from read_clip: AAC's noise-substituted bands (PNS) come from a random generator in
FFmpeg's decoder, so after a seek they decode differently; read_clip's audio of a window then depended on
where its seek landed, while one pass decodes them as a straight decode of the file does.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from avfused.data.decode import (
    _SEEK_MARGIN_S,
    Clip,
    ClipSpec,
    _audio_frame_array,
    _check_not_truncated,
    _clip_from_span,
    _declared_duration,
    _fps,
    _instants,
    _open,
    _origin,
    _place_audio,
    _Span,
    _streams,
)
from avfused.data.pyav import av
from avfused.errors import ConfigError, EmptyMediaError, MediaDecodeError, TruncatedMediaError

_REORDER_DEPTH = 17  # H.264 allows 16 B-frames between references: enough packet times to bound a frame's end
SEEK_GAP_S = 10.0  # decoding forward is cheaper than a seek unless the gap exceeds a key-frame interval
AUDIO_WAIT_S = 10.0  # muxers interleave tracks within seconds (FFmpeg's max_interleave_delta: 10 s)


class _Frame:
    """A decoded frame and its RGB pixels, converted on first use and then shared by every window."""

    __slots__ = ("time", "frame", "rgb")

    def __init__(self, time: float, frame: av.VideoFrame) -> None:
        self.time, self.frame, self.rgb = time, frame, None

    @property
    def width(self) -> int:
        return self.frame.width

    @property
    def height(self) -> int:
        return self.frame.height

    def to_ndarray(self, format: str) -> np.ndarray:  # noqa: A002 -- av.VideoFrame's signature
        if format != "rgb24":
            return self.frame.to_ndarray(format=format)
        if self.rgb is None:
            self.rgb = self.frame.to_ndarray(format="rgb24")
        return self.rgb


@dataclass
class _Window:
    start: float
    end: float
    instants: np.ndarray | None  # None under "loop": every frame of the window is kept

    def keeps(self, shown: float, replaced: float) -> bool:
        """Whether a frame on screen from ``shown`` until ``replaced`` may be in this window's clip: it is
        on screen at one of its instants, or it is the window's last frame (read_clip keeps both)."""
        if shown >= self.end or replaced <= self.start:
            return False
        if self.instants is None or replaced >= self.end:
            return True
        return bool(np.any((self.instants >= shown) & (self.instants < replaced)))


class _Pass:
    """What one decoding pass has seen: kept frames, audio chunks, how far each track has got."""

    def __init__(self, fps: float, origin: float, rate: int) -> None:
        self.fps, self.origin, self.rate = fps, origin, rate
        self.decoded_video = False
        self.last_video = -math.inf  # time of the latest video frame, across seeks
        self.skipped_until = -math.inf  # the latest time of a frame left undecoded
        self.audio_end = -math.inf
        self.restart(0.0)

    def restart(self, position: float) -> None:
        """Forget the decoded stretch (a seek to ``position`` seconds): its frames, audio and frame count."""
        self.position = position
        self.kept: list[_Frame] = []
        self.latest: _Frame | None = None  # the newest frame, kept or not once its successor arrives
        self.chunks: list[tuple[float, np.ndarray]] = []
        self.stretch_video = -math.inf  # the latest video time since the restart
        self.stretch_audio = -math.inf
        self.first_packet: float | None = None  # AVI: frames are counted from the first packet
        self.shown = 0
        self.packet_times: deque[float] = deque(maxlen=_REORDER_DEPTH)

    def frame_time(self, frame: av.VideoFrame, count_frames: bool) -> float:
        """The frame's time as read_clip reckons it (AVI: counted at the constant rate it implies)."""
        if count_frames and self.first_packet is not None:
            t = self.first_packet + self.shown / self.fps
        elif frame.time is not None:
            t = frame.time - self.origin
        else:
            t = self.stretch_video + 1.0 / self.fps
        self.shown += 1
        return t

    def wanted(self, t: float, windows: Sequence[_Window], first: int) -> bool:
        """Whether the frame of a video packet presented at ``t`` may be picked by a window from ``first``
        on. It is on screen until the next frame, which comes no later than the earliest later time among
        the packets read so far (a B-frame follows the frames it refers to); an undecided one is wanted."""
        following = min((u for u in self.packet_times if u > t), default=math.inf)
        self.packet_times.append(t)
        if _kept_by(windows, first, t, following):
            return True
        self.skipped_until = max(self.skipped_until, t)
        return False

    def reached(self) -> float:
        """How far this stretch has decoded the video (the seek target before its first frame)."""
        return max(self.stretch_video, self.position)

    def add_video(self, frame: _Frame, windows: Sequence[_Window], first: int) -> None:
        """Take the newest frame; keep the one before it if a window from ``first`` on may use it."""
        previous = self.latest
        if previous is not None and _kept_by(windows, first, previous.time, frame.time):
            self.kept.append(previous)
        self.latest = frame
        self.decoded_video = True
        self.stretch_video = self.last_video = frame.time

    def add_audio(self, frame: av.AudioFrame) -> None:
        self.rate = frame.sample_rate
        t = frame.time - self.origin if frame.time is not None else max(self.stretch_audio, 0.0)
        self.stretch_audio = self.audio_end = t + frame.samples / self.rate
        self.chunks.append((t, _audio_frame_array(frame)))

    def passed(self, window: _Window) -> bool:
        """Whether both tracks are past the window's end (or the audio has stopped well before)."""
        if self.stretch_video < window.end:
            return False
        return self.stretch_audio >= window.end or self.stretch_video >= window.end + AUDIO_WAIT_S

    def drop_before(self, start: float) -> None:
        """Let go of frames replaced at or before ``start`` and audio that ends by then."""
        frames = self.kept + ([self.latest] if self.latest is not None else [])
        first = 0
        while first + 1 < len(frames) and frames[first + 1].time <= start:
            first += 1
        self.kept = self.kept[first:] if first < len(self.kept) else []
        rate = self.rate or 1
        self.chunks = [(t, data) for t, data in self.chunks if t + data.shape[1] / rate > start]

    def span(self, window: _Window, media_end: float, path: object) -> _Span:
        """The window's frames and audio as read_clip's decoding would have collected them."""
        times: list[float] = []
        frames: list[_Frame] = []
        for frame in self.kept + ([self.latest] if self.latest is not None else []):
            t = frame.time
            if t >= window.end:
                continue
            if t <= window.start:
                times, frames = [], []
            elif window.instants is not None and frames and not _on_screen(window.instants, times[-1], t):
                times.pop()
                frames.pop()
            times.append(t)
            frames.append(frame)
        if not frames:
            ends = f"(the video ends at {self.last_video:.3f} s)"
            raise EmptyMediaError(path, f"no video frame at or after {window.start:.3f} s {ends}")
        if self.rate <= 0 or self.audio_end == -math.inf:
            raise EmptyMediaError(path, "the audio track holds no decodable samples")
        rate = self.rate
        chunks = [(t, d) for t, d in self.chunks if t + d.shape[1] / rate > window.start and t < window.end]
        audio = _place_audio(chunks, window.start, window.end, rate)
        covered = min(self.stretch_audio, window.end) - window.start
        return _Span(times, frames, audio, covered, rate, media_end, self.fps)


def _kept_by(windows: Sequence[_Window], first: int, shown: float, replaced: float) -> bool:
    for i in range(first, len(windows)):
        if windows[i].start >= replaced:  # ascending starts: the rest start later still
            return False
        if windows[i].keeps(shown, replaced):
            return True
    return False


def _on_screen(instants: np.ndarray, shown: float, replaced: float) -> bool:
    return bool(np.any((instants >= shown) & (instants < replaced)))


def stream_windows(
    path: str | os.PathLike,
    spec: ClipSpec,
    starts: Sequence[float],
    seek_gap: float = SEEK_GAP_S,
    skip_unneeded: bool = True,
) -> Iterator[Clip]:
    """The Clip of each window start, from one pass over the file (see the module docstring)."""
    if any(b < a for a, b in zip(starts, starts[1:], strict=False)):
        raise ConfigError("window starts must be in ascending order")
    windows = [_Window(s, s + spec.seconds, _instants(s, spec)) for s in starts]
    if not windows:
        return
    with _open(path) as container:
        vstream, astream = _streams(container, path)
        count_frames = container.format.name == "avi"  # as in _decode_span: AVI stores no presentation times
        # frames no window picks need not be decoded unless others refer to them (FFmpeg skips the
        # non-reference ones); AVI's counted frame times need every frame
        skippable = skip_unneeded and not count_frames
        state = _Pass(_fps(vstream), _origin(vstream), astream.codec_context.sample_rate or 0)
        index = 0  # the first window not yet yielded
        while True:
            if windows[index].start - state.reached() > seek_gap:
                target = max(0.0, windows[index].start - _SEEK_MARGIN_S)
                container.seek(
                    int((target + state.origin) / vstream.time_base), stream=vstream, backward=True, any_frame=False
                )
                state.restart(target)
            try:
                for packet in container.demux(vstream, astream):
                    if count_frames and state.first_packet is None and packet.stream is vstream:
                        if packet.dts is not None:
                            state.first_packet = float(packet.dts * vstream.time_base) - state.origin
                    if skippable and packet.stream is vstream and packet.pts is not None:
                        t = float(packet.pts * vstream.time_base) - state.origin
                        wanted = state.wanted(t, windows, index)
                        vstream.codec_context.skip_frame = "DEFAULT" if wanted else "NONREF"
                    for frame in packet.decode():
                        if isinstance(frame, av.VideoFrame):
                            t = state.frame_time(frame, count_frames)
                            state.add_video(_Frame(t, frame), windows, index)
                        else:
                            state.add_audio(frame)
                    while index < len(windows) and state.passed(windows[index]):
                        window = windows[index]
                        yield _clip_from_span(state.span(window, math.inf, path), window.start, spec, path)
                        index += 1
                        if index < len(windows):
                            state.drop_before(windows[index].start)
                    if index == len(windows):
                        return
                    if windows[index].start - state.reached() > seek_gap:
                        break  # far ahead: seek there
                else:
                    break  # the end of the file
            except av.FFmpegError as exc:
                where = f"after {max(state.last_video, 0.0):.3f} s" if state.decoded_video else "before the first frame"
                raise MediaDecodeError(path, f"corrupt or truncated data {where} ({exc})") from exc
        yield from _windows_at_the_end(container, vstream, state, windows[index:], spec, path)


def _windows_at_the_end(container, vstream, state: _Pass, windows: Sequence[_Window], spec: ClipSpec, path: object):
    """The windows still open at the end of the file: they reach past the last frame, or the audio ran short
    (the same checks, in the same order, as read_clip's)."""
    if not state.decoded_video:
        declared = _declared_duration(container, vstream)
        if declared:
            raise TruncatedMediaError(path, f"the container declares {declared:.3f} s but no video frame decodes")
        raise EmptyMediaError(path, "the video track holds no decodable frames")
    media_end = max(state.last_video, state.skipped_until) + 1.0 / state.fps
    for i, window in enumerate(windows):
        span = state.span(window, media_end, path)
        if i == 0:
            _check_not_truncated(container, vstream, media_end, state.fps, path)
        if window.start >= media_end:
            ends = f"(the video ends at {media_end:.3f} s)"
            raise EmptyMediaError(path, f"no video frame at or after {window.start:.3f} s {ends}")
        yield _clip_from_span(span, window.start, spec, path)
