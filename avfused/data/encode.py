"""Write video files with PyAV (used by the synthetic benchmark and by the tests).

``write_video(path, frames uint8 (N, H, W, 3) RGB, audio float (C, S) or (S,) in [-1, 1], fps,
sample_rate, ...)`` muxes one video and one audio track (either may be left out with ``None`` to
make deliberately incomplete files). ``frame_times`` (N,) seconds gives a variable frame rate.
The container follows the file extension unless ``container`` names one.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from avfused.data.pyav import av

# encoder names of the codecs the readers are tested on
VIDEO_CODECS = {"h264": "libx264", "vp9": "libvpx-vp9", "mpeg4": "mpeg4", "mjpeg": "mjpeg"}
AUDIO_CODECS = {"aac": "aac", "opus": "libopus", "pcm_s16le": "pcm_s16le", "pcm_f32le": "pcm_f32le", "flac": "flac"}
_TIME_BASE_MS = Fraction(1, 1000)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")


def _add_video(container, codec: str, fps: float, width: int, height: int, vfr: bool, options: dict | None):
    stream = container.add_stream(VIDEO_CODECS.get(codec, codec), rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    # the frame period as the encoder's time base (VFR: milliseconds), set on every frame too
    stream.codec_context.time_base = _TIME_BASE_MS if vfr else 1 / Fraction(fps).limit_denominator(1001)
    if options:
        stream.codec_context.options = {**stream.codec_context.options, **options}
        if "threads" in options:  # PyAV's own thread count wins over the option unless set here
            stream.codec_context.thread_count = int(options["threads"])
    return stream


def _audio_frame(chunk: np.ndarray, fmt: str, layout: str, rate: int, pts: int) -> av.AudioFrame:
    """(C, n) float -> an AudioFrame in the encoder's sample format."""
    planar = fmt.endswith("p")
    base = fmt.rstrip("p")
    data = chunk if planar else chunk.T.reshape(1, -1)
    if base == "s16":
        data = np.clip(np.round(data * 32767.0), -32768, 32767).astype(np.int16)
    elif base == "s32":
        data = np.clip(np.round(data * 2147483647.0), -2147483648, 2147483647).astype(np.int32)
    elif base == "flt":
        data = data.astype(np.float32)
    elif base == "dbl":
        data = data.astype(np.float64)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


def _audio_frames(stream, audio: np.ndarray, rate: int):
    ctx = stream.codec_context
    size = ctx.frame_size or 1024
    for pts in range(0, audio.shape[1], size):
        yield _audio_frame(audio[:, pts : pts + size], ctx.format.name, _layout(audio.shape[0]), rate, pts)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | None,
    audio: np.ndarray | None,
    fps: float = 25.0,
    sample_rate: int = 16000,
    video_codec: str = "h264",
    audio_codec: str = "aac",
    frame_times: np.ndarray | None = None,
    container: str | None = None,
    video_options: dict | None = None,
    audio_options: dict | None = None,
    audio_bit_rate: int | None = None,
) -> None:
    """Encode ``frames`` and ``audio`` into ``path`` (see the module docstring)."""
    out = av.open(str(path), mode="w", format=container)
    try:
        vstream = astream = None
        if frames is not None:
            n, height, width, _ = frames.shape
            vstream = _add_video(out, video_codec, fps, width, height, frame_times is not None, video_options)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            astream = out.add_stream(
                AUDIO_CODECS.get(audio_codec, audio_codec), rate=sample_rate, layout=_layout(audio.shape[0])
            )
            if audio_bit_rate:
                astream.codec_context.bit_rate = audio_bit_rate
            if audio_options:
                astream.codec_context.options = {**astream.codec_context.options, **audio_options}
        audio_frames = _audio_frames(astream, audio, sample_rate) if astream is not None else iter(())
        pending = next(audio_frames, None)
        if vstream is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame = frame.reformat(format=vstream.pix_fmt)
                if frame_times is not None:
                    frame.pts, frame.time_base = int(round(frame_times[i] * 1000)), _TIME_BASE_MS
                    now = frame_times[i]
                else:
                    frame.pts, frame.time_base, now = i, vstream.codec_context.time_base, i / fps
                while pending is not None and pending.pts / sample_rate <= now:  # interleave by time
                    out.mux(astream.encode(pending))
                    pending = next(audio_frames, None)
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode())
        while pending is not None:
            out.mux(astream.encode(pending))
            pending = next(audio_frames, None)
        if astream is not None:
            out.mux(astream.encode())
    finally:
        out.close()
