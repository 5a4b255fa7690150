"""Apex spotting: the frame of largest facial change from the onset (docs/predict.md).

SMIC-HS and new recordings carry no apex annotation, and the clip window (eq. 1-2) and
key frames (eq. 3-4) depend on it. The paper falls back to the middle frame for SMIC. Here
the apex is *measured*. Every frame from onset to offset is aligned with the one similarity
transform fitted on the onset frame (as in preprocessing), turned grey and area-averaged to
``SPOT_SIDE`` x ``SPOT_SIDE`` (which averages the sensor noise away). Then, per frame t,

    r(t) = G_t - G_on - w_t (G_off - G_on),   w_t = clip(<G_t - G_on, G_off - G_on> / |G_off - G_on|^2, 0, 1)
    d(t) = mean over pixels of |r(t)|

is the change from the onset that is *not* a step along the way from onset to offset; d is
smoothed by a centred moving average (``smooth_window``: 1 frame below 30 frames, then 3,
5, ... one more each side per 30 frames) and the apex is the frame where it is largest
(the first on a tie; never the onset or the offset themselves).

Why this curve. A micro-expression rises from a neutral onset to its apex and relaxes back
by the offset, so its change from the onset peaks at the apex. The plain change |G_t - G_on|
(what ARS sums) also grows with everything that drifts slowly over the clip: head motion
the onset-frame alignment does not remove, lighting. For small displacements the image
changes linearly with them, so a slow drift at any point of the clip is close to a blend
of the onset and the offset frame and the projection removes it, while the expression,
absent at both ends, stays in r(t). On the synthetic sets (0.1..0.7 px head drift) the plain
change peaked at the offset and missed the apex by 5 frames on average, worse than the
middle frame; the projected one misses by a fraction of a frame (benchmarks/apex.py).
Assumption: the offset frame is (near) neutral again. A window cut at the apex (offset =
apex) has no return to neutral, and the curve then cannot find it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from mer_utils.data.sample import APEX_MODES, Sample
from mer_utils.errors import PreprocessError

SPOT_SIDE = 64  # grey crops are area-averaged to this side before differencing
CROP_SIZE = 128  # side of the aligned face crops the curve is computed from


@dataclass
class SpottedApex:
    """The spotted ``apex`` (a frame number), and the curve it was read from: ``frame_numbers``,
    ``raw`` d(t) and ``smoothed`` d(t), one value per frame from onset to offset."""

    apex: int
    frame_numbers: list[int]
    raw: np.ndarray
    smoothed: np.ndarray


def change_curve(crops: np.ndarray, side: int = SPOT_SIDE) -> np.ndarray:
    """d(t) of the module docstring for aligned (T, H, W, 3) uint8 RGB crops from onset
    (``crops[0]``) to offset (``crops[-1]``): the mean absolute change from the onset left
    after removing its projection on the onset-to-offset change; d = 0 at both ends."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) == 0:
        raise PreprocessError(f"apex spotting expects (T, H, W, 3) crops, got shape {crops.shape}")
    grey = [cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32), (side, side),
                       interpolation=cv2.INTER_AREA).astype(np.float64).ravel() for frame in crops]
    onset = grey[0]
    drift = grey[-1] - onset
    norm = float(drift @ drift)
    curve = []
    for frame in grey:
        change = frame - onset
        weight = min(max(float(change @ drift) / norm, 0.0), 1.0) if norm > 0 else 0.0
        curve.append(float(np.abs(change - weight * drift).mean()))
    return np.array(curve)


def smooth_window(n_frames: int) -> int:
    """Frames of the moving average for a clip of ``n_frames``: 1 below 30, 3 below 60, 5 below 90, ..."""
    return 2 * (max(n_frames, 0) // 30) + 1


def smooth(curve: np.ndarray, frames: int = 1) -> np.ndarray:
    """Centred moving average over ``frames`` (odd) values, ends padded with the end values."""
    curve = np.asarray(curve, dtype=np.float64)
    if frames <= 1 or len(curve) < 3:
        return curve.copy()
    half = frames // 2
    padded = np.pad(curve, half, mode="edge")
    return np.convolve(padded, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")


def spot_apex(crops: np.ndarray, frame_numbers: Sequence[int], side: int = SPOT_SIDE,
              smooth_frames: int | None = None) -> SpottedApex:
    """The apex of aligned crops from onset (``crops[0]``) to offset (``crops[-1]``): the frame
    number where the smoothed d(t) is largest (``smooth_frames`` None: ``smooth_window``).
    A clip of one or two frames has its last frame as apex."""
    numbers = [int(n) for n in frame_numbers]
    if len(numbers) != len(crops):
        raise PreprocessError(f"apex spotting: {len(crops)} crops but {len(numbers)} frame numbers")
    raw = change_curve(crops, side)
    smoothed = smooth(raw, smooth_window(len(numbers)) if smooth_frames is None else smooth_frames)
    if len(numbers) <= 2:
        return SpottedApex(numbers[-1], numbers, raw, smoothed)
    inner = smoothed[1:-1]  # neither the onset nor the offset is the apex
    apex = numbers[1 + int(np.argmax(inner))]
    return SpottedApex(apex, numbers, raw, smoothed)


def window_frames(sample: Sample, onset: int | None = None, offset: int | None = None) -> list[int]:
    """Frame numbers on disk from ``onset`` to ``offset`` (default: the sample's)."""
    onset = sample.onset if onset is None else onset
    offset = sample.offset if offset is None else offset
    numbers = [n for n in sample.frame_numbers if onset <= n <= offset]
    if not numbers or numbers[0] != onset:
        raise PreprocessError(f"clip {sample.key}: onset frame {onset} has no file; cannot spot its apex")
    return numbers


def spot_sample_apex(sample: Sample, face_crop: str = "dlib", size: int = CROP_SIZE) -> SpottedApex:
    """Spot ``sample``'s apex between its onset and offset on aligned crops (face fitted on the
    onset frame, as preprocessing does) of side ``size``."""
    from mer_utils.preprocess import aligned_crops

    numbers = window_frames(sample)
    crops = aligned_crops(sample, numbers, size=size, face_crop=face_crop)
    return spot_apex(crops, numbers)


def nearest_frame(sample: Sample, number: int) -> int:
    """The frame on disk within [onset, offset] closest to ``number`` (the earlier on a tie)."""
    inside = [n for n in sample.frame_numbers if sample.onset <= n <= sample.offset] or list(sample.frame_numbers)
    return min(inside, key=lambda n: (abs(n - number), n))


def with_apex(samples: Sequence[Sample], mode: str = "annotated", face_crop: str = "dlib",
              size: int = CROP_SIZE) -> list[Sample]:
    """``samples`` with their apex chosen by ``mode``:

    - "annotated": unchanged (an unannotated apex, as in SMIC, is already the middle frame);
    - "middle": every apex set to the middle frame ``onset + (offset - onset) // 2``;
    - "spotted": every apex spotted by :func:`spot_sample_apex`.

    Under "middle" and "spotted" ``apex_inferred`` is True and ``extra`` records
    ``annotated_apex`` (None where there was none) and ``apex_source``.
    """
    if mode not in APEX_MODES:
        raise PreprocessError(f"apex mode {mode!r} is not one of {', '.join(APEX_MODES)}")
    if mode == "annotated":
        return list(samples)
    from mer_utils.preprocess import infer_apex

    chosen = []
    for sample in samples:
        if mode == "middle":
            apex = nearest_frame(sample, infer_apex(sample.onset, sample.offset))
        else:
            apex = spot_sample_apex(sample, face_crop=face_crop, size=size).apex
        extra = {**sample.extra, "annotated_apex": None if sample.apex_inferred else sample.apex, "apex_source": mode}
        chosen.append(sample.replace(apex=apex, apex_inferred=True, extra=extra))
    return chosen
