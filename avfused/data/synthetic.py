"""A built-in synthetic audio-visual deepfake benchmark: procedural talking faces, no download.

``generate(out_dir, num_identities, clips_per_identity, seed, fps, size, seconds, sample_rate)`` writes
mp4 files (H.264 + AAC, via PyAV) and ``meta_data.csv`` in the FakeAVCeleb layout, so
:func:`avfused.data.datasets.fakeavceleb_records` reads it like the real benchmark; ``splits.json``
maps each identity to train / val / test, and the CSV loader copies it into the records, so the
identity split is the one fixed here (face donors and voice donors of a fake come from its own split,
or are outsiders who are no source anywhere: nothing of a test identity is seen in training).
Same seed -> the same benchmark: the same metadata and splits, and the same frames and audio rendered
bit for bit. The mp4 bytes are the same too for nearly every file, but x264 (through PyAV 18) now and
then encodes identical frames differently (about 1 % of files per run here, even with one thread);
such a file decodes within about 1 grey level (mean) of the other run's.

Real clip: an identity (skin tone, face shape, eyes, hair, glasses, beard; a voice: pitch, formant
scale, speaking rate) says a random syllable sequence: a glottal pulse train through three formant
resonators per vowel, syllable envelopes, fricative noise bursts, a noise floor. The mouth opening
follows the speech envelope and its shape the vowel; eyes blink; the head sways.

Manipulations (the FakeAVCeleb categories; the CSV's method column uses FakeAVCeleb's names -- wav2lip,
faceswap, rtvc, faceswap-wav2lip -- and ``methods.json`` maps each file to the generator's own family name):
    visual  "faceswap"  the inner face comes from another identity, colour-matched only in part, a
                        little smoother, blended with a narrow seam (a ring of brightness change);
            "lipsync"   the mouth follows another utterance (not the audio heard), re-rendered at a
                        lower resolution inside a lower-face patch with a slight tone shift;
    audio   "vocoder"   the speech re-synthesised through a crude channel vocoder (8-18 bands, noise
                        or monotone buzz carrier);
            "voiceclone" the same words in another identity's voice from a band-limited, flat-pitched
                        synthesiser (a cheap TTS);
    both    one visual and one audio manipulation ("faceswap+vocoder", ...).
Per identity the categories cycle RVRA, FVRA, RVRA, RVFA, FVFA (40 % real), rotated by identity.
``silence_cue=True`` (off by default) starts every fake's audio with 0.2-0.5 s of digital silence, the
shortcut FakeAVCeleb is reported to hold, to test the silence baseline and its removal.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import signal

from avfused.data.encode import write_video
from avfused.errors import ConfigError

log = logging.getLogger(__name__)

CSV_HEADER = ["source", "target1", "target2", "method", "category", "type", "race", "gender", "path", ""]
CYCLE = ("RVRA", "FVRA", "RVRA", "RVFA", "FVFA")
_TYPES = {
    "RVRA": ("A", "RealVideo-RealAudio"),
    "RVFA": ("B", "RealVideo-FakeAudio"),
    "FVRA": ("C", "FakeVideo-RealAudio"),
    "FVFA": ("D", "FakeVideo-FakeAudio"),
}
# vowel -> formants F1, F2, F3 (Hz) and mouth (opening gain, width gain)
_VOWELS = {
    "a": ((730, 1090, 2440), (1.0, 0.85)),
    "e": ((530, 1840, 2480), (0.7, 0.95)),
    "i": ((270, 2290, 3010), (0.45, 1.05)),
    "o": ((570, 840, 2410), (0.8, 0.65)),
    "u": ((300, 870, 2240), (0.5, 0.55)),
}
_VOWEL_NAMES = tuple(_VOWELS)
_TONES = (
    ("tone-light", (232, 196, 170)),
    ("tone-medium", (205, 158, 120)),
    ("tone-tan", (170, 120, 85)),
    ("tone-dark", (120, 80, 55)),
)
SILENCE_CUE_SECONDS = (0.2, 0.5)  # leading digital silence of a fake with silence_cue


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """A synthetic person: how they look and how they sound."""

    name: str
    race: str
    gender: str
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    face_axes: tuple[float, float]  # half width, half height as fractions of the frame side
    eye_gap: float
    eye_size: float
    mouth_width: float
    hair_height: float
    glasses: bool
    beard: bool
    f0: float
    formant_scale: float
    rate: float  # syllables per second


def make_identity(index: int, seed: int) -> Identity:
    rng = np.random.default_rng([seed, index, 7919])
    race, base = _TONES[rng.integers(len(_TONES))]
    skin = tuple(float(np.clip(c * rng.uniform(0.92, 1.08) + rng.normal(0, 6), 30, 250)) for c in base)
    female = bool(rng.random() < 0.5)
    hair_level = rng.uniform(20, 140)
    hair = tuple(float(np.clip(hair_level * t, 5, 230)) for t in rng.uniform(0.6, 1.3, 3))
    return Identity(
        name=f"id{index:05d}",
        race=race,
        gender="women" if female else "men",
        skin=skin,
        hair=hair,
        iris=tuple(float(v) for v in rng.uniform(20, 160, 3)),
        lips=tuple(float(v) for v in (np.array([170, 80, 80]) * rng.uniform(0.7, 1.1, 3))),
        face_axes=(float(rng.uniform(0.25, 0.32)), float(rng.uniform(0.33, 0.41))),
        eye_gap=float(rng.uniform(0.09, 0.13)),
        eye_size=float(rng.uniform(0.028, 0.042)),
        mouth_width=float(rng.uniform(0.07, 0.11)),
        hair_height=float(rng.uniform(0.05, 0.16)),
        glasses=bool(rng.random() < 0.25),
        beard=bool(not female and rng.random() < 0.3),
        f0=float(rng.uniform(175, 250) if female else rng.uniform(90, 150)),
        formant_scale=float(rng.uniform(1.05, 1.2) if female else rng.uniform(0.88, 1.02)),
        rate=float(rng.uniform(3.0, 5.5)),
    )


# ---------------------------------------------------------------------------------------------
@dataclass
class Utterance:
    """A syllable plan: onsets and lengths (s), vowels, loudness, fricative onsets."""

    starts: np.ndarray
    lengths: np.ndarray
    vowels: list[str]
    gains: np.ndarray
    fricative: np.ndarray


def plan_utterance(rng: np.random.Generator, seconds: float, rate: float) -> Utterance:
    starts, lengths, vowels, gains, fricative = [], [], [], [], []
    t = rng.uniform(0.0, 0.12)
    while t < seconds:
        length = float(np.clip(rng.normal(1.0 / rate, 0.25 / rate), 0.08, 0.4))
        starts.append(t)
        lengths.append(length)
        vowels.append(_VOWEL_NAMES[rng.integers(len(_VOWEL_NAMES))])
        gains.append(rng.uniform(0.55, 1.0))
        fricative.append(rng.random() < 0.4)
        t += length * rng.uniform(0.85, 1.05) + (rng.uniform(0.08, 0.25) if rng.random() < 0.15 else 0.0)
    return Utterance(np.array(starts), np.array(lengths), vowels, np.array(gains), np.array(fricative))


def syllable_envelope(length: int) -> np.ndarray:
    return np.sin(np.linspace(0.0, np.pi, length)) ** 2


def speech_envelope(plan: Utterance, n: int, rate: int) -> np.ndarray:
    """(n,) loudness envelope of a plan at ``rate`` samples per second."""
    env = np.zeros(n)
    for start, length, gain in zip(plan.starts, plan.lengths, plan.gains, strict=True):
        a, b = int(start * rate), min(n, int((start + length) * rate))
        if b > a:
            env[a:b] += gain * syllable_envelope(int((start + length) * rate) - a)[: b - a]
    return env


def _resonator(freq: float, bandwidth: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bandwidth / rate)
    a = np.array([1.0, -2 * r * np.cos(2 * np.pi * freq / rate), r * r])
    return np.array([a.sum()]), a  # unit gain at DC-ish, so formant peaks stay comparable


def glottal_source(f0: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Pulse train following the instantaneous pitch ``f0`` (n,), with glottal roll-off."""
    phase = np.cumsum(f0 / rate)
    pulses = np.diff(np.floor(phase), prepend=0.0) * rng.uniform(0.9, 1.1, f0.shape[0])
    shaped = signal.lfilter([1.0], [1.0, -1.9, 0.9025], pulses)  # double pole at 0.95: glottal pulse shape
    return np.diff(shaped, prepend=0.0)  # lip radiation


@functools.lru_cache(maxsize=32)
def _sos(kind: str, cutoff: tuple[float, ...], rate: int, order: int) -> np.ndarray:
    return signal.butter(order, cutoff[0] if len(cutoff) == 1 else cutoff, btype=kind, fs=rate, output="sos")


def synthesize_speech(
    plan: Utterance, voice: Identity, n: int, rate: int, rng: np.random.Generator, flat: bool = False
) -> np.ndarray:
    """(n,) speech of ``plan`` in ``voice``; ``flat`` removes intonation and jitter (a cheap TTS)."""
    t = np.arange(n) / rate
    if flat:
        f0 = np.full(n, voice.f0)
    else:
        f0 = voice.f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t + rng.uniform(0, 6.3)) - 0.06 * t)
        f0 *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(np.arange(1, n + 1))
    source = glottal_source(f0, rate, rng)
    aspiration = rng.standard_normal(n) * 0.02
    out = np.zeros(n)
    for start, length, vowel, gain, fric in zip(
        plan.starts, plan.lengths, plan.vowels, plan.gains, plan.fricative, strict=True
    ):
        a, b = int(start * rate), min(n, int((start + length) * rate))
        if b <= a:
            continue
        segment = source[a:b] + aspiration[a:b]
        for formant, bandwidth in zip(_VOWELS[vowel][0], (70.0, 100.0, 140.0), strict=True):
            freq = min(formant * voice.formant_scale, 0.45 * rate)
            segment = signal.lfilter(*_resonator(freq, bandwidth, rate), segment)
        out[a:b] += gain * segment * syllable_envelope(int((start + length) * rate) - a)[: b - a]
        if fric:
            m = min(int(rng.uniform(0.03, 0.06) * rate), a)
            if m > 0:
                noise = signal.sosfilt(_sos("highpass", (3500.0,), rate, 4), rng.standard_normal(m + 64))[64:]
                out[a - m : a] += noise * syllable_envelope(m) * rng.uniform(0.1, 0.3) * np.abs(out).max(initial=1.0)
    return out


def _scale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random recording level: peak 0.35 - 0.85."""
    peak = np.abs(x).max()
    return x / peak * rng.uniform(0.35, 0.85) if peak > 0 else x


def _record(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random level plus a white noise floor 32 - 50 dB down: a microphone recording."""
    return _scale(x, rng) + rng.standard_normal(x.shape[0]) * 10 ** (-rng.uniform(32, 50) / 20)


def channel_vocoder(x: np.ndarray, rate: int, rng: np.random.Generator, f0: float) -> np.ndarray:
    """Re-synthesise ``x`` through a channel vocoder: band envelopes of ``x`` modulate a noise or
    monotone-buzz carrier filtered into the same bands."""
    bands = int(rng.integers(8, 19))
    edges = np.geomspace(100.0, min(7000.0, 0.45 * rate), bands + 1)
    n = x.shape[0]
    if rng.random() < 0.5:
        carrier = rng.standard_normal(n)
    else:
        carrier = glottal_source(np.full(n, f0 * rng.uniform(0.9, 1.1)), rate, rng) * 8
    smooth = _sos("lowpass", (float(rng.uniform(25, 50)),), rate, 2)
    out = np.zeros(n)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = _sos("bandpass", (float(lo), float(hi)), rate, 2)
        envelope = np.maximum(signal.sosfilt(smooth, np.abs(signal.sosfilt(band, x))), 0.0)
        out += signal.sosfilt(band, carrier) * envelope
    return out


# ---------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """Per-clip look: background, light, head motion, blinks."""

    background: np.ndarray  # (S, S, 3) float
    light: float
    sway: tuple[float, float, float, float]  # amplitude x, y (fraction of side), frequency, phase
    blinks: np.ndarray  # blink centre times (s)
    noise: float


def make_scene(rng: np.random.Generator, size: int, seconds: float) -> Scene:
    hue = rng.choice([rng.uniform(90, 140), rng.uniform(140, 170), rng.uniform(40, 90)])  # OpenCV hue: no skin
    top = np.array([hue, rng.uniform(30, 160), rng.uniform(60, 230)], np.float32)
    bottom = top * np.array([1.0, rng.uniform(0.7, 1.2), rng.uniform(0.6, 1.0)], np.float32)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    hsv = np.clip(top * (1 - ramp) + bottom * ramp, 0, [179, 255, 255]).astype(np.uint8)
    background = cv2.cvtColor(np.repeat(hsv, size, axis=1), cv2.COLOR_HSV2RGB).astype(np.float32)
    blinks = np.cumsum(rng.uniform(0.6, 2.5, 4)) - rng.uniform(0, 1.0)
    return Scene(
        background,
        float(rng.uniform(0.85, 1.15)),
        (
            float(rng.uniform(0, 0.03)),
            float(rng.uniform(0, 0.02)),
            float(rng.uniform(0.3, 1.2)),
            float(rng.uniform(0, 6.3)),
        ),
        blinks,
        float(rng.uniform(1.0, 3.0)),
    )


def _c(color: tuple[float, ...], light: float) -> tuple[float, ...]:
    return tuple(min(255.0, max(0.0, v * light)) for v in color)


def draw_face(
    person: Identity, scene: Scene, size: int, t: float, opening: float, width: float
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Render one frame (S, S, 3) uint8 at time ``t`` with the given mouth opening and width gains;
    also return the face ellipse (cx, cy, ax, ay) in pixels."""
    image = scene.background.copy()
    ax_, ay_, freq, phase = scene.sway
    cx = size * (0.5 + ax_ * np.sin(2 * np.pi * freq * t + phase))
    cy = size * (0.52 + ay_ * np.sin(2 * np.pi * freq * 1.3 * t + phase))
    ax, ay = person.face_axes[0] * size, person.face_axes[1] * size
    light = scene.light
    aa = cv2.LINE_AA
    p = lambda x, y: (int(round(x)), int(round(y)))  # noqa: E731
    hair = _c(person.hair, light)
    cv2.ellipse(image, p(cx, cy - ay * 0.25), p(ax * 1.08, ay * (0.85 + person.hair_height)), 0, 0, 360, hair, -1, aa)
    cv2.ellipse(image, p(cx, cy), p(ax, ay), 0, 0, 360, _c(person.skin, light), -1, aa)
    shade = _c(tuple(v * 0.85 for v in person.skin), light)
    cv2.ellipse(image, p(cx, cy + ay * 0.05), p(ax * 0.18, ay * 0.22), 0, 200, 340, shade, max(1, size // 64), aa)
    if person.beard:
        beard = _c(person.hair, light * 1.2)
        cv2.ellipse(image, p(cx, cy + ay * 0.55), p(ax * 0.75, ay * 0.45), 0, 0, 180, beard, -1, aa)
    blink = float(np.min(np.abs(scene.blinks - t))) if scene.blinks.size else 1.0
    eye_open = min(1.0, blink / 0.06)
    for side in (-1, 1):
        ex, ey = cx + side * person.eye_gap * size, cy - ay * 0.22
        er = person.eye_size * size
        cv2.ellipse(image, p(ex, ey), p(er * 1.4, max(1, er * eye_open)), 0, 0, 360, _c((240, 240, 235), light), -1, aa)
        if eye_open > 0.3:
            cv2.circle(image, p(ex, ey), max(1, int(er * 0.7)), _c(person.iris, light), -1, aa)
            cv2.circle(image, p(ex, ey), max(1, int(er * 0.3)), (10, 10, 10), -1, aa)
        brow = ey - er * 2.0
        cv2.line(
            image,
            p(ex - er * 1.5, brow + side * 0.5),
            p(ex + er * 1.5, brow - side * 0.5),
            hair,
            max(1, size // 48),
            aa,
        )
        if person.glasses:
            cv2.circle(image, p(ex, ey), int(er * 2.2), (30, 30, 30), max(1, size // 96), aa)
    mw = person.mouth_width * size * width
    mh = max(1.0, 0.12 * size * opening)
    my = cy + ay * 0.5
    cv2.ellipse(image, p(cx, my), p(mw, mh * 0.5 + 1), 0, 0, 360, _c(person.lips, light), -1, aa)
    if opening > 0.05:
        cv2.ellipse(image, p(cx, my), p(mw * 0.8, mh * 0.4), 0, 0, 360, _c((60, 15, 25), light), -1, aa)
    return image, (cx, cy, ax, ay)


def _finish(image: np.ndarray, noise: float) -> np.ndarray:
    """Add sensor noise (OpenCV's generator, seeded per clip: several times faster than numpy's here)."""
    grain = np.empty(image.shape, np.float32)
    cv2.randn(grain, 0.0, noise)
    noisy = image.astype(np.float32)
    noisy += grain
    return cv2.convertScaleAbs(np.maximum(noisy, 0.0))


def mouth_track(plan: Utterance, n_frames: int, fps: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mouth opening and width gains from the plan's envelope and vowels."""
    n = int(np.ceil(n_frames / fps * rate))
    env = speech_envelope(plan, n, rate)
    opening, width = np.zeros(n_frames), np.ones(n_frames)
    for i in range(n_frames):
        a, b = int(i / fps * rate), int((i + 1) / fps * rate)
        opening[i] = env[a:b].mean() if b > a else 0.0
        t = (i + 0.5) / fps
        active = np.flatnonzero((plan.starts <= t) & (plan.starts + plan.lengths > t))
        if active.size:
            gain, wide = _VOWELS[plan.vowels[active[0]]][1]
            opening[i] *= gain
            width[i] = 1.0 + (wide - 1.0) * min(1.0, opening[i] * 2)
    return np.clip(opening, 0, 1.2), width


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipJob:
    out_dir: str
    identity: int
    clip: int
    category: str
    visual_method: str | None
    audio_method: str | None
    face_donor: int | None
    voice_donor: int | None
    seed: int
    fps: float
    size: int
    seconds: float
    sample_rate: int
    silence_cue: bool = False


def _job_rng(job: ClipJob, stream: int) -> np.random.Generator:
    return np.random.default_rng([job.seed, job.identity, job.clip, stream])


def render_clip(job: ClipJob) -> tuple[np.ndarray, np.ndarray]:
    """The frames (N, S, S, 3) uint8 and audio (S,) float32 of one job."""
    person = make_identity(job.identity, job.seed)
    rng = _job_rng(job, 0)
    size, fps, rate = job.size, job.fps, job.sample_rate
    n_frames, n_samples = int(round(job.seconds * fps)), int(round(job.seconds * rate))
    plan = plan_utterance(rng, job.seconds, person.rate)
    speech = _record(synthesize_speech(plan, person, n_samples, rate, rng), rng)

    # a fake's whole signal is synthetic, its noise floor included: the manipulations act on the recording
    audio = speech
    if job.audio_method == "vocoder":
        audio = _scale(channel_vocoder(speech, rate, rng, person.f0), rng)
    elif job.audio_method == "voiceclone":
        donor = make_identity(job.voice_donor, job.seed)
        cloned = _record(synthesize_speech(plan, donor, n_samples, rate, rng, flat=True), rng)
        cutoff = float(rng.uniform(3200, 5200))
        audio = _scale(signal.sosfilt(_sos("lowpass", (round(cutoff, -2),), rate, 8), cloned), rng)
    audio = audio.astype(np.float32)
    if job.silence_cue and job.category != "RVRA":  # a stream of its own: the rest of the clip is unchanged
        audio[: int(_job_rng(job, 3).uniform(*SILENCE_CUE_SECONDS) * rate)] = 0.0

    mouth_plan = plan
    if job.visual_method == "lipsync":  # the mouth says something else than what is heard
        mouth_plan = plan_utterance(_job_rng(job, 1), job.seconds, person.rate)
    opening, width = mouth_track(mouth_plan, n_frames, fps, rate)
    scene = make_scene(rng, size, job.seconds)
    donor = make_identity(job.face_donor, job.seed) if job.visual_method == "faceswap" else None
    art = _job_rng(job, 2)
    # artefact strengths vary per clip (and their signs), so no single threshold separates the classes
    swap = (
        art.uniform(0.4, 0.75),  # share of the skin colour difference corrected
        art.uniform(0.8, 1.5),  # blur of the swapped face (pixels)
        art.uniform(0.55, 0.7),  # mask half width / face half width
        art.uniform(0.6, 0.75),  # mask half height / face half height
        float(art.choice([-1, 1]) * art.uniform(8, 18)),  # seam brightness change
    )
    patch = (int(art.integers(3, 6)), float(art.choice([-1, 1]) * art.uniform(6, 14)))  # lip patch: scale, tone
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    cv2.setRNGSeed(int(art.integers(2**31)))
    for i in range(n_frames):
        t = i / fps
        image, (cx, cy, ax, ay) = draw_face(person, scene, size, t, opening[i], width[i])
        if donor is not None:
            image = _face_swap(image, donor, scene, size, t, opening[i], width[i], (cx, cy, ax, ay), person, swap)
        elif job.visual_method == "lipsync":
            image = _lip_patch(image, (cx, cy, ax, ay), *patch)
        frames[i] = _finish(image, scene.noise)
    return frames, audio


def _face_swap(image, donor, scene, size, t, opening, width, face, person, params) -> np.ndarray:
    """Blend the donor's inner face, colour-matched only in part and a little smoother, with a seam: a
    thin ring of changed brightness where the blend mask falls off."""
    match, blur, wx, wy, seam = params
    donor_image, _ = draw_face(donor, scene, size, t, opening, width)
    donor_image = donor_image + match * (np.array(person.skin) - np.array(donor.skin)) * scene.light
    donor_image = cv2.GaussianBlur(donor_image, (0, 0), blur)
    cx, cy, ax, ay = face
    mask = np.zeros((size, size), np.float32)
    cv2.ellipse(
        mask,
        (int(round(cx)), int(round(cy + ay * 0.08))),
        (int(ax * wx * 1.3), int(ay * wy * 1.2)),
        0,
        0,
        360,
        1.0,
        -1,
        cv2.LINE_AA,
    )
    soft = cv2.GaussianBlur(mask, (0, 0), 1.2)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
    ring = (4.0 * soft * (1.0 - soft))[..., None]  # 1 on the mask's edge, 0 inside and outside
    return image * (1 - mask) + donor_image * mask + seam * ring


def _lip_patch(image: np.ndarray, face, factor: int, shift: float) -> np.ndarray:
    """Re-render the lower face at 1/factor resolution, with a tone shift: a lip-sync generator's patch."""
    cx, cy, ax, ay = face
    size = image.shape[0]
    x0, x1 = int(max(0, cx - ax * 0.6)), int(min(size, cx + ax * 0.6))
    y0, y1 = int(max(0, cy + ay * 0.1)), int(min(size, cy + ay * 0.9))
    if x1 - x0 < factor * 2 or y1 - y0 < factor * 2:
        return image
    region = image[y0:y1, x0:x1]
    small = cv2.resize(region, ((x1 - x0) // factor, (y1 - y0) // factor), interpolation=cv2.INTER_AREA)
    image = image.copy()
    image[y0:y1, x0:x1] = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) + shift
    return image


# ---------------------------------------------------------------------------------------------
def assign_splits(num_identities: int, fractions: tuple[float, float, float], seed: int) -> dict[int, str]:
    """Identity index -> split, by shuffled whole identities (at least one per split when possible)."""
    order = np.random.default_rng([seed, 104729]).permutation(num_identities)
    total = sum(fractions)
    counts = [int(round(num_identities * f / total)) for f in fractions]
    for k in (1, 2):
        if fractions[k] > 0 and counts[k] == 0 and num_identities > 2:
            counts[k] = 1
    counts[0] = num_identities - counts[1] - counts[2]
    names = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    return {int(i): names[k] for k, i in enumerate(order)}


def plan_jobs(
    out_dir: Path,
    num_identities: int,
    clips_per_identity: int,
    seed: int,
    fps: float,
    size: int,
    seconds: float,
    sample_rate: int,
    splits: dict[int, str],
    silence_cue: bool = False,
) -> list[ClipJob]:
    jobs = []
    for ident in range(num_identities):
        peers = [j for j in range(num_identities) if j != ident and splits[j] == splits[ident]]
        # alone in its split: donors are outsiders, people who are no source anywhere, so nothing crosses
        peers = peers or [num_identities + 1000 + ident]
        rng = np.random.default_rng([seed, ident, 31337])
        for clip in range(clips_per_identity):
            category = CYCLE[(clip + ident) % len(CYCLE)]
            visual = audio = None
            if category[0] == "F":
                visual = ("faceswap", "lipsync")[int(rng.integers(2))]
            if category[2] == "F":
                audio = ("vocoder", "voiceclone")[int(rng.integers(2))]
            jobs.append(
                ClipJob(
                    str(out_dir),
                    ident,
                    clip,
                    category,
                    visual,
                    audio,
                    face_donor=int(rng.choice(peers)) if visual == "faceswap" else None,
                    voice_donor=int(rng.choice(peers)) if audio == "voiceclone" else None,
                    seed=seed,
                    fps=fps,
                    size=size,
                    seconds=seconds,
                    sample_rate=sample_rate,
                    silence_cue=silence_cue,
                )
            )
    return jobs


def _relative_dir(job: ClipJob, person: Identity) -> str:
    return f"{_TYPES[job.category][1]}/{person.race}/{person.gender}/{person.name}"


def family(job: ClipJob) -> str:
    """The generator's own name of a clip's manipulation: "real", "faceswap", "lipsync+vocoder", ..."""
    return "+".join(m for m in (job.visual_method, job.audio_method) if m) or "real"


def fakeavceleb_method(job: ClipJob) -> str:
    """FakeAVCeleb's name for the same kind of fake (its CSV vocabulary): lipsync -> wav2lip, any audio
    fake -> rtvc, faceswap with fake audio -> faceswap-wav2lip."""
    if job.visual_method is None:
        return "rtvc" if job.audio_method else "real"
    if job.visual_method == "lipsync":
        return "wav2lip"
    return "faceswap-wav2lip" if job.audio_method else "faceswap"


def run_job(job: ClipJob) -> list[str]:
    """Render, encode and write one clip; return its CSV row."""
    cv2.setNumThreads(1)
    person = make_identity(job.identity, job.seed)
    folder = _relative_dir(job, person)
    name = f"{job.clip:05d}.mp4"
    frames, audio = render_clip(job)
    target = Path(job.out_dir) / folder
    target.mkdir(parents=True, exist_ok=True)
    # one encoder thread and x264's default preset: the fewest run-to-run bitstream differences (see
    # the module docstring)
    write_video(
        target / name,
        frames,
        audio,
        fps=job.fps,
        sample_rate=job.sample_rate,
        video_codec="h264",
        audio_codec="aac",
        video_options={"crf": "20", "threads": "1"},
        audio_options={"aac_coder": "fast"},
        audio_bit_rate=64000,
    )
    letter, kind = _TYPES[job.category]
    donor = lambda index: make_identity(index, job.seed).name if index is not None else "-"  # noqa: E731
    return [
        person.name,
        donor(job.face_donor),
        donor(job.voice_donor),
        fakeavceleb_method(job),
        letter,
        kind,
        person.race,
        person.gender,
        name,
        folder,
    ]


@dataclass
class SyntheticSummary:
    out_dir: str
    clips: int
    identities: int
    seconds_taken: float
    categories: dict[str, int]


def generate(
    out_dir: str | os.PathLike,
    num_identities: int = 16,
    clips_per_identity: int = 10,
    seed: int = 0,
    fps: float = 25.0,
    size: int = 96,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2),
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    silence_cue: bool = False,
) -> SyntheticSummary:
    """Write the benchmark into ``out_dir`` (see the module docstring). ``workers`` > 0 renders in
    that many processes; 0 renders here. An existing non-empty ``out_dir`` is an error unless
    ``overwrite``."""
    if num_identities < 1 or clips_per_identity < 1:
        raise ConfigError(f"need at least one identity and one clip, got {num_identities}, {clips_per_identity}")
    if size < 32 or size % 2 or fps <= 0 or seconds <= 0 or sample_rate < 8000:
        raise ConfigError(
            f"size must be even and >= 32, fps and seconds positive, sample_rate >= 8000; got "
            f"size={size}, fps={fps}, seconds={seconds}, sample_rate={sample_rate}"
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    split_of = assign_splits(num_identities, tuple(splits), seed)
    jobs = plan_jobs(
        out, num_identities, clips_per_identity, seed, fps, size, seconds, sample_rate, split_of, silence_cue
    )
    rows = _run_jobs(jobs, workers, progress)
    with open(out / "meta_data.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    families = {f"{row[-1]}/{row[-2]}": family(job) for row, job in zip(rows, jobs, strict=True)}
    (out / "methods.json").write_text(json.dumps(families, indent=1, sort_keys=True))
    identity_splits = {make_identity(i, seed).name: split_of[i] for i in range(num_identities)}
    (out / "splits.json").write_text(json.dumps(identity_splits, indent=1, sort_keys=True))
    (out / "synthetic.json").write_text(
        json.dumps(
            {
                "generator": "avfused.data.synthetic",
                "seed": seed,
                "num_identities": num_identities,
                "clips_per_identity": clips_per_identity,
                "fps": fps,
                "size": size,
                "seconds": seconds,
                "sample_rate": sample_rate,
                "splits": list(splits),
                **({"silence_cue": True} if silence_cue else {}),
            },
            indent=1,
        )
    )
    categories = {c: sum(j.category == c for j in jobs) for c in _TYPES}
    summary = SyntheticSummary(str(out), len(rows), num_identities, time.perf_counter() - started, categories)
    log.debug(
        "wrote %d synthetic clips of %d identities to %s in %.1f s",
        summary.clips,
        num_identities,
        out,
        summary.seconds_taken,
    )
    return summary


def _run_jobs(jobs: list[ClipJob], workers: int, progress: bool) -> list[list[str]]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="clip", disable=not progress)
    rows = []
    if workers <= 0:
        for job in jobs:
            rows.append(run_job(job))
            bar.update()
    else:
        # fork where there is one: the workers use only numpy / OpenCV / PyAV, and spawning would re-import
        # torch (via the avfused package) in every worker, seconds each
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for row in pool.imap(run_job, jobs, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()
    return rows
