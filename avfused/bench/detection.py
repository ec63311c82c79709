"""The end-to-end detection case: ``avfused detect``'s work on a generated video, per minute of video.

bench_video(directory, spec) -> path     a talking-face video written once with the project's encoder
                                         (x264 defaults + AAC; 60 s of 1280x720 at 25 fps) and then reused
measure_detection(config, preset, video) -> DetectionRow: one detect_file call (default hop: back-to-back
                                         windows) with a random-weight model of ``config``, backend auto
run_detection(presets, video, ...) -> [DetectionRow]   each preset, the fastest of ``runs`` calls
detection_targets(rows, device_type) -> [TargetResult]   the CPU detection targets (wall time), met or not

The decode / model split: decoding runs in a producer thread beside the model (avfused.detect), so the two
overlap. decode_s is that thread's busy time (decoding, RGB conversion, crops, resampling), model_s the
forward passes', wait_s the time the model waited for windows, cpu_s the process's CPU time (on a shared
machine a steadier figure than wall time).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from avfused.bench.targets import TargetResult
from avfused.config import ModelConfig

DETECT = "detect"  # the --ops name of this case
PRESETS = ("small", "demo")
# CPU detection targets: wall seconds for a minute of 720p 25 fps video on the CPU, default hop
TARGET_S_PER_MINUTE = {"small": 8.0, "demo": 5.0}
DEFAULT_VIDEO_DIR = Path(tempfile.gettempdir()) / "avfused-bench"
RUNS = 2  # detect calls per preset; the fastest is reported


@dataclass(frozen=True)
class VideoSpec:
    """The generated video: ``seconds`` of ``width`` x ``height`` at ``fps``, stereo AAC at ``sample_rate``."""

    seconds: float = 60.0
    width: int = 1280
    height: int = 720
    fps: float = 25.0
    sample_rate: int = 48000
    loop_seconds: float = 4.0  # the rendered stretch; the video plays it forwards, backwards, forwards ...

    @property
    def name(self) -> str:
        return f"detect-{self.seconds:g}s-{self.width}x{self.height}-{self.fps:g}fps.mp4"

    @property
    def label(self) -> str:
        return f"{self.seconds:g} s {self.width}x{self.height} {self.fps:g} fps H.264 + AAC"


FULL_VIDEO = VideoSpec()
QUICK_VIDEO = VideoSpec(seconds=2.0, width=160, height=90, sample_rate=16000, loop_seconds=1.0)


class _Frames:
    """The video's frames made one at a time (a minute of 720p is 4 GB as one array): the rendered square
    face stretch, played back and forth, widened to the frame by repeating its edge columns."""

    def __init__(self, faces: np.ndarray, spec: VideoSpec) -> None:
        self.faces, self.spec = faces, spec
        self.shape = (int(round(spec.seconds * spec.fps)), spec.height, spec.width, 3)

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        import cv2

        n = len(self.faces)
        left = (self.spec.width - self.faces.shape[2]) // 2
        right = self.spec.width - self.faces.shape[2] - left
        top = (self.spec.height - self.faces.shape[1]) // 2
        bottom = self.spec.height - self.faces.shape[1] - top
        for i in range(self.shape[0]):
            k = i % (2 * n - 2) if n > 1 else 0
            face = self.faces[k if k < n else 2 * n - 2 - k]
            yield cv2.copyMakeBorder(face, top, bottom, left, right, cv2.BORDER_REPLICATE)


def bench_video(directory: str | os.PathLike, spec: VideoSpec = FULL_VIDEO) -> Path:
    """The video of ``spec`` in ``directory``, written first if it is not there (under a temporary name,
    renamed when complete: an interrupted run leaves nothing that looks finished)."""
    from avfused.data.encode import write_video
    from avfused.data.synthetic import ClipJob, render_clip

    path = Path(directory) / spec.name
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    side = min(spec.width, spec.height) // 2 * 2
    job = ClipJob("", 0, 0, "RVRA", None, None, None, None, 0, spec.fps, side, spec.loop_seconds, spec.sample_rate)
    faces, speech = render_clip(job)
    mono = np.resize(speech, int(round(spec.seconds * spec.sample_rate)))  # the speech stretch repeated
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.mp4")
    try:
        write_video(partial, _Frames(faces, spec), np.stack([mono, 0.8 * mono]), spec.fps, spec.sample_rate)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


@dataclass
class DetectionRow:
    preset: str
    video: str
    status: str  # "ok", "failed" or "skipped"
    reason: str = ""
    video_seconds: float = 0.0
    video_kbps: float = 0.0
    backend: str = ""
    threads: int = 0
    windows: int = 0
    hop_s: float = 0.0
    wall_s: float | None = None
    decode_s: float | None = None
    model_s: float | None = None
    wait_s: float | None = None
    cpu_s: float | None = None
    runs: int = 1  # the figures are those of the fastest run

    @property
    def per_minute_s(self) -> float | None:
        """Wall seconds per minute of video."""
        return None if self.wall_s is None else self.wall_s * 60.0 / self.video_seconds

    def to_dict(self) -> dict:
        return asdict(self) | {"per_minute_s": self.per_minute_s}


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch threads, then go back to the count before."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _backend_label(device: torch.device) -> str:
    from avfused.backends import resolve_backend
    from avfused.bench.variants import variant_label

    return "auto: " + variant_label(resolve_backend("auto", device), device)


def measure_detection(
    config: ModelConfig,
    preset: str,
    video: Path,
    spec: VideoSpec,
    device: torch.device | str = "cpu",
    decode: str = "stream",
) -> DetectionRow:
    """One detect_file call on ``video`` with a random-weight model of ``config`` (after one warm-up batch)."""
    from avfused.data.decode import ClipSpec
    from avfused.detect import detect_file
    from avfused.model import SingleStreamNet

    device = torch.device(device)
    torch.manual_seed(0)
    model = SingleStreamNet(config, backend="auto").to(device).eval()
    clip = ClipSpec.from_config(config)
    frames = torch.rand(1, config.frames, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():  # the first call loads kernels and allocates: not the steady state
        model(frames, torch.zeros(1, clip.num_samples, device=device))
    cpu = time.process_time()
    result = detect_file(model, video, clip, device=device, amp=device.type == "cuda", decode=decode)
    cpu = time.process_time() - cpu
    row = DetectionRow(preset, spec.label, "ok", video_seconds=spec.seconds, backend=_backend_label(device))
    row.video_kbps = video.stat().st_size * 8 / 1000 / spec.seconds
    row.threads, row.hop_s = torch.get_num_threads(), config.clip_seconds
    if not result.ok:
        row.status, row.reason = "failed", str(result.error)
        return row
    t = result.timings
    row.windows, row.cpu_s = len(result.windows), cpu
    row.wall_s, row.decode_s, row.model_s, row.wait_s = t.wall_s, t.decode_s, t.model_s, t.wait_s
    return row


def run_detection(
    presets: Sequence[tuple[str, ModelConfig]],
    video_spec: VideoSpec,
    video_dir: Path,
    device: torch.device,
    log: Callable[[str], None],
    deadline: float | None = None,
    runs: int = 1,
) -> list[DetectionRow]:
    """Measure each (name, config) ``runs`` times and keep the fastest (on a shared machine the least
    disturbed); past ``deadline`` (time.perf_counter) the rest is listed skipped."""
    path = video_dir / video_spec.name
    if not path.exists():
        log(f"writing the detection benchmark video ({video_spec.label}) to {path}, once")
    try:
        path = bench_video(video_dir, video_spec)
    except Exception as exc:  # no video, no measurement: said in the table, the rest of the run goes on
        return [DetectionRow(name, video_spec.label, "failed", f"{type(exc).__name__}: {exc}") for name, _ in presets]
    rows = []
    for name, config in presets:
        if deadline is not None and time.perf_counter() > deadline:
            rows.append(DetectionRow(name, video_spec.label, "skipped", "time limit reached"))
            continue
        try:
            measured = [measure_detection(config, name, path, video_spec, device) for _ in range(max(runs, 1))]
            row = min(measured, key=lambda r: math.inf if r.wall_s is None else r.wall_s)
            row.runs = len(measured)
        except Exception as exc:
            row = DetectionRow(name, video_spec.label, "failed", f"{type(exc).__name__}: {str(exc)[:200]}")
        rows.append(row)
        shown = f"{row.wall_s:.2f} s wall" if row.status == "ok" else f"{row.status}: {row.reason}"
        log(f"detect {name} on {video_spec.label}: {shown}")
    return rows


def detection_targets(rows: Sequence[DetectionRow], device_type: str, quick: bool) -> list[TargetResult]:
    """Issue 15's targets (CPU only): wall seconds per minute of 720p 25 fps video, default hop."""
    if device_type != "cpu":
        return []
    results = []
    for preset, limit in TARGET_S_PER_MINUTE.items():
        description = f"CPU detect, a minute of 720p 25 fps video, {preset} model: <= {limit:g} s"
        row = next((r for r in rows if r.preset == preset), None)
        if quick or row is None or row.per_minute_s is None:
            note = "--quick measures a tiny video" if quick else ("not in this run" if row is None else row.reason)
            results.append(TargetResult(description, "-", None, None, f"<= {limit:g} s", None, note))
            continue
        value = row.per_minute_s
        results.append(TargetResult(description, row.backend, None, value, f"<= {limit:g} s", value <= limit))
    return results
