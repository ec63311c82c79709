"""Face crops for clips: detect a face box per frame, smooth the boxes over time, add a margin, crop.

``FaceCropper(detector)(frames uint8 (T, H, W, 3) RGB, size) -> (uint8 (T, size, size, 3), FaceReport)``

Detectors (none downloads a model):
    "haar"  OpenCV's bundled frontal-face Haar cascade (cv2.data.haarcascades). OpenCV 4.x wheels ship
            it; OpenCV 5 wheels dropped CascadeClassifier and the XML files, so it is then unavailable.
    "skin"  a skin-colour detector written here: the YCrCb skin range (Cr 133-173, Cb 77-127), cleaned
            by morphology; the largest blob of face-like size, shape and fill is the face.
    "auto"  "haar" where OpenCV has it, else "skin".

Smoothing: frames where the detector finds nothing take the box of the nearest frame where it found
one; the box centres and sides are then averaged over ``smooth`` neighbouring frames, so the crop
does not jitter. The square crop has side (1 + 2 * margin) * max(box width, box height).
No face in any frame: the fallback is the centred square crop of the frame; the report says so
(``FaceReport.fallback == "center"``) and a warning is logged.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from avfused.data.features import center_square, crop_resize
from avfused.errors import ConfigError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
DETECTORS = ("auto", "haar", "skin")
_HAAR_FILE = "haarcascade_frontalface_default.xml"


@dataclass
class FaceReport:
    """What the face step did for one clip."""

    detector: str
    frames: int
    detected: int
    fallback: str | None
    boxes: list[Box] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.detected > 0


def haar_available() -> bool:
    """Whether this OpenCV build has CascadeClassifier and its bundled frontal-face cascade."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    return hasattr(cv2, "CascadeClassifier") and os.path.isfile(os.path.join(folder, _HAAR_FILE))


class HaarDetector:
    """OpenCV's bundled Viola-Jones frontal-face cascade; the largest detection wins."""

    name = "haar"

    def __init__(self) -> None:
        if not haar_available():
            raise ConfigError(
                f"the 'haar' face detector needs OpenCV's CascadeClassifier and {_HAAR_FILE}; this OpenCV "
                f"({cv2.__version__}) has neither -- install opencv-python-headless<5 or use faces='skin'"
            )
        self._cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, _HAAR_FILE))

    def __call__(self, image: np.ndarray) -> Box | None:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        side = min(gray.shape)
        found = self._cascade.detectMultiScale(gray, 1.1, 4, minSize=(max(16, side // 10),) * 2)
        if len(found) == 0:
            return None
        x, y, w, h = max(found, key=lambda b: b[2] * b[3])
        return float(x), float(y), float(x + w), float(y + h)


class SkinDetector:
    """The largest skin-coloured blob whose size, aspect and fill look like a face."""

    name = "skin"

    def __init__(self, min_area: float = 0.02, aspect: tuple[float, float] = (0.8, 2.2), min_fill: float = 0.45):
        self.min_area, self.aspect, self.min_fill = min_area, aspect, min_fill

    def __call__(self, image: np.ndarray) -> Box | None:
        ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
        mask = cv2.inRange(ycrcb, (0, 133, 77), (255, 173, 127))
        k = max(3, (min(image.shape[:2]) // 40) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        best, best_area = None, self.min_area * image.shape[0] * image.shape[1]
        for label in range(1, count):
            x, y, w, h, area = stats[label]
            if area < best_area or not self.aspect[0] <= h / max(w, 1) <= self.aspect[1]:
                continue
            if area / float(w * h) < self.min_fill:
                continue
            best, best_area = (float(x), float(y), float(x + w), float(y + h)), area
        return best


def make_detector(name: str):
    """A detector by name ("auto", "haar", "skin")."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown face detector {name!r}; expected one of {DETECTORS} or 'none'")
    if name == "haar" or (name == "auto" and haar_available()):
        return HaarDetector()
    return SkinDetector()


def fill_missing(boxes: list[Box | None]) -> list[Box] | None:
    """Frames without a detection take the box of the nearest frame with one (None if none has one)."""
    known = [i for i, b in enumerate(boxes) if b is not None]
    if not known:
        return None
    return [boxes[min(known, key=lambda k: abs(k - i))] for i in range(len(boxes))]


def smooth_boxes(boxes: list[Box], window: int) -> np.ndarray:
    """Moving average of box centre and side over ``window`` frames -> (T, 3): cx, cy, side."""
    arr = np.asarray(boxes, dtype=np.float64)
    params = np.stack(
        [
            (arr[:, 0] + arr[:, 2]) / 2,
            (arr[:, 1] + arr[:, 3]) / 2,
            np.maximum(arr[:, 2] - arr[:, 0], arr[:, 3] - arr[:, 1]),
        ],
        axis=1,
    )
    if window <= 1 or len(boxes) == 1:
        return params
    half = window // 2
    padded = np.concatenate([params[:1].repeat(half, 0), params, params[-1:].repeat(half, 0)])
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    return np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(3)], axis=1)


class FaceCropper:
    """Detect, smooth, add the margin, crop square and resize (see the module docstring)."""

    def __init__(self, detector: str = "auto", margin: float = 0.25, smooth: int = 3) -> None:
        if margin < 0:
            raise ConfigError(f"face margin must be >= 0, got {margin}")
        self.detector = make_detector(detector)
        self.margin, self.smooth = margin, smooth

    def boxes(self, frames: np.ndarray) -> tuple[list[Box] | None, int]:
        """Square crop boxes for each frame (None when no frame has a face) and the detection count."""
        found = [self.detector(image) for image in frames]
        filled = fill_missing(found)
        if filled is None:
            return None, 0
        params = smooth_boxes(filled, self.smooth)
        half = params[:, 2] * (0.5 + self.margin)
        boxes = [(cx - h, cy - h, cx + h, cy + h) for (cx, cy, _), h in zip(params, half, strict=True)]
        return boxes, sum(b is not None for b in found)

    def __call__(self, frames: np.ndarray, size: int) -> tuple[np.ndarray, FaceReport]:
        boxes, detected = self.boxes(frames)
        fallback = None
        if boxes is None:
            fallback = "center"
            boxes = [center_square(frames[0])] * len(frames)
            log.warning(
                "no face found in %d frames by the %s detector; using the centre crop", len(frames), self.detector.name
            )
        crops = np.stack([crop_resize(image, box, size) for image, box in zip(frames, boxes, strict=True)])
        report = FaceReport(self.detector.name, len(frames), detected, fallback, [tuple(map(float, b)) for b in boxes])
        return crops, report
