"""The end-to-end detect case of ``avfused bench``: it runs on a tiny video with --quick, writes its table,
JSON rows and targets, reuses the video it generated, and judges the targets by their definition. No test
asserts a time.
"""

from __future__ import annotations

import json

import pytest
import torch

from avfused.bench import detection, report
from avfused.bench.cases import quick_config
from avfused.bench.detection import QUICK_VIDEO, DetectionRow, bench_video, detection_targets
from avfused.cli import main
from avfused.data.decode import probe, window_starts


@pytest.fixture(scope="module")
def quick_detect(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        status = main(["bench", "--quick", "--ops", "detect", "--output-dir", str(out), "--video-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    return status, out


def test_quick_detect_case_writes_its_table_and_rows(quick_detect):
    status, out = quick_detect
    assert status == 0
    slug = next(out.glob("*.json")).stem
    data = json.loads((out / f"{slug}.json").read_text())
    assert data["rows"] == []  # --ops detect: no op or model cases
    (row,) = data["detection"]
    video = out / QUICK_VIDEO.name
    info = probe(video)
    config = quick_config()
    expected = len(window_starts(info.duration, config.clip_seconds, config.clip_seconds, slack=1 / info.fps))
    assert row["status"] == "ok" and row["windows"] == expected
    assert row["wall_s"] >= row["model_s"] > 0 and row["decode_s"] > 0 and row["cpu_s"] > 0
    assert row["per_minute_s"] == pytest.approx(row["wall_s"] * 60 / QUICK_VIDEO.seconds)
    markdown = (out / f"{slug}.md").read_text()
    assert "### end-to-end detection (2 s 160x90 25 fps H.264 + AAC" in markdown
    lines = markdown.split("### end-to-end detection", 1)[1].splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == "| " + " | ".join(report.DETECTION_COLUMNS) + " |" and len(table) == 2
    targets = [t for t in data["targets"] if t["description"].startswith("CPU detect")]
    assert len(targets) == 2 and all(t["verdict"] == "not measured" and "--quick" in t["note"] for t in targets)


def test_the_video_is_generated_once_and_complete(quick_detect, tmp_path):
    _, out = quick_detect
    video = out / QUICK_VIDEO.name
    written = video.stat().st_mtime_ns
    assert bench_video(out, QUICK_VIDEO) == video and video.stat().st_mtime_ns == written  # reused
    assert not list(out.glob(".*partial*"))
    info = probe(video)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (160, 90, "h264", "aac")
    assert info.duration == pytest.approx(QUICK_VIDEO.seconds, abs=0.05)


def _row(preset: str, wall: float) -> DetectionRow:
    return DetectionRow(preset, "60 s", "ok", video_seconds=60.0, backend="auto: cpp", wall_s=wall)


def test_targets_are_seconds_per_minute_of_video():
    met, missed = detection_targets([_row("small", 7.9), _row("demo", 5.1)], "cpu", quick=False)
    assert met.met is True and met.value == pytest.approx(7.9) and met.needed == "<= 8 s"
    assert missed.met is False and missed.needed == "<= 5 s"
    half = DetectionRow("small", "30 s", "ok", video_seconds=30.0, wall_s=3.0)
    assert half.per_minute_s == pytest.approx(6.0)
    failed = DetectionRow("demo", "60 s", "failed", "boom", video_seconds=60.0)
    small, demo = detection_targets([_row("small", 9.0), failed], "cpu", quick=False)
    assert small.met is False and demo.met is None and demo.note == "boom"
    assert detection_targets([_row("small", 1.0)], "cuda", quick=False) == []  # CPU targets
    assert detection.TARGET_S_PER_MINUTE == {"small": 8.0, "demo": 5.0}  # the targets the README quotes
