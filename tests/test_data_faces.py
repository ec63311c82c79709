"""Face crops: the skin detector finds a drawn face off-centre, boxes are filled and smoothed over
frames, the margin sizes the crop, and no face falls back to the centre crop with a report."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_data_decode import burst_audio

from avfused.data.decode import read_clip
from avfused.data.encode import write_video
from avfused.data.faces import FaceCropper, HaarDetector, SkinDetector, fill_missing, haar_available, smooth_boxes
from avfused.data.synthetic import Scene, draw_face, make_identity
from avfused.errors import ConfigError


def face_frame(width=160, height=120, shift=(-30, 5), seed=3):
    """A drawn face on a blue background, its centre moved by ``shift`` pixels; returns the frame and
    the face centre."""
    person = make_identity(seed, 0)
    side = 96
    background = np.zeros((side, side, 3), np.float32)
    background[:] = (40, 70, 160)
    scene = Scene(background, 1.0, (0.0, 0.0, 0.0, 0.0), np.array([]), 0.0)
    face, (cx, cy, _, _) = draw_face(person, scene, side, 0.0, 0.3, 1.0)
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = (40, 70, 160)
    x0 = width // 2 - side // 2 + shift[0]
    y0 = height // 2 - side // 2 + shift[1]
    frame[y0 : y0 + side, x0 : x0 + side] = np.clip(face, 0, 255).astype(np.uint8)
    return frame, (x0 + cx, y0 + cy)


def test_skin_detector_finds_the_face():
    frame, (cx, cy) = face_frame()
    box = SkinDetector()(frame)
    assert box is not None
    x0, y0, x1, y1 = box
    assert x0 < cx < x1 and y0 < cy < y1
    assert abs((x0 + x1) / 2 - cx) < 8 and abs((y0 + y1) / 2 - cy) < 15


def test_no_face_falls_back_to_centre_and_reports(caplog):
    frames = np.zeros((3, 60, 80, 3), np.uint8)
    frames[:] = (30, 90, 200)
    frames[:, 20:40, 30:50] = 255  # something that is not skin
    with caplog.at_level(logging.WARNING):
        crops, report = FaceCropper("skin")(frames, 32)
    assert crops.shape == (3, 32, 32, 3)
    assert report.fallback == "center" and report.detected == 0 and not report.found
    assert report.boxes[0] == (10.0, 0.0, 70.0, 60.0)  # the centred 60x60 square
    assert "no face found" in caplog.text


def test_crop_centres_the_face_with_margin():
    frame, (cx, cy) = face_frame()
    frames = np.stack([frame] * 4)
    cropper = FaceCropper("skin", margin=0.25)
    crops, report = cropper(frames, 48)
    assert report.detected == 4 and report.fallback is None
    x0, y0, x1, y1 = report.boxes[0]
    raw = SkinDetector()(frame)
    side = max(raw[2] - raw[0], raw[3] - raw[1])
    assert x1 - x0 == pytest.approx(1.5 * side)  # margin 0.25 on each side
    # the face centre lands near the crop centre; the background dominates the corners
    assert abs((x0 + x1) / 2 - cx) < 8
    corner, middle = crops[0, 0, 0].astype(int), crops[0, 24, 24].astype(int)
    assert corner[2] > corner[0] and middle[0] > middle[2]  # blue corner, skin-toned middle


def test_fill_and_smooth_boxes():
    boxes = [None, (10, 10, 30, 30), None, None, (14, 10, 34, 30)]
    filled = fill_missing(boxes)
    assert filled[0] == filled[1] == filled[2] and filled[3] == filled[4]
    assert fill_missing([None, None]) is None
    rng = np.random.default_rng(0)
    jitter = [(50 + dx, 40 + dy, 90 + dx, 80 + dy) for dx, dy in rng.normal(0, 3, (20, 2))]
    raw = smooth_boxes(jitter, 1)
    smooth = smooth_boxes(jitter, 5)
    assert raw.shape == smooth.shape == (20, 3)
    assert smooth[:, 0].std() < 0.7 * raw[:, 0].std()  # centres move less
    assert np.allclose(smooth[:, 2], 40.0)


def test_haar_is_used_when_opencv_has_it():
    frame, _ = face_frame()
    if haar_available():
        box = HaarDetector()(frame)
        assert box is None or len(box) == 4
    else:
        with pytest.raises(ConfigError, match="CascadeClassifier"):
            HaarDetector()
    assert FaceCropper("auto").detector.name == ("haar" if haar_available() else "skin")
    with pytest.raises(ConfigError, match="unknown face detector"):
        FaceCropper("dlib")


def test_read_clip_with_face_crop(tmp_path):
    frame, (cx, cy) = face_frame(width=160, height=120, shift=(-30, 5))
    frames = np.stack([np.roll(frame, k, axis=1) for k in range(10)])  # the face drifts right
    path = tmp_path / "face.mp4"
    write_video(path, frames, burst_audio(1.0, 16000, 1), fps=10)
    clip = read_clip(path, frames=4, image_size=32, seconds=1.0, faces="skin")
    assert clip.video.shape == (4, 3, 32, 32)
    assert clip.face_report is not None and clip.face_report.detected == 4
    centres = [(b[0] + b[2]) / 2 for b in clip.face_report.boxes]
    assert centres[0] < centres[-1]  # the crop follows the face
    assert abs(centres[0] - (cx + 1)) < 10
    plain = read_clip(path, frames=4, image_size=32, seconds=1.0)
    assert plain.face_report is None
