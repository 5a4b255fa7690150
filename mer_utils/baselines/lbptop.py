"""LBP-TOP + linear SVM: the MEGC2019 challenge baseline (Zhao and Pietikainen 2007).

Features. Local binary patterns on the Three Orthogonal Planes of a grey video volume
(T, H, W): XY (each frame), XT (each row's time slice) and YT (each column's time
slice). A pixel's code thresholds its ``n_points`` circular neighbours at ``radius``
(bilinear interpolation off the grid, as in scikit-image) against the centre:
bit p = [g_p >= g_c]. Codes are mapped to the non-rotation-invariant uniform patterns
("u2", scikit-image's ``nri_uniform``): P(P-1)+2 uniform labels plus one label for all
non-uniform codes, 59 bins for P = 8, the descriptor of the MEGC2019 baseline.

The codes are computed on the whole 3-D volume at once with shifted numpy views (no
per-slice or per-pixel Python loop); they equal scikit-image's ``local_binary_pattern``
on every interior pixel of every slice (tests/test_lbptop.py checks it). Only interior
pixels, whose full neighbourhood lies inside the plane, get a code. Each plane's codes
are histogrammed per spatial block of a ``grid`` over (H, W), pooling the whole time
extent; each histogram is L1-normalised; the feature is plane-major:
[XY blocks..., XT blocks..., YT blocks...], each block ``n_bins`` long.

Classifier. StandardScaler + LinearSVC (class_weight="balanced" by default, since UF1
and UAR weigh classes equally), trained on every subject but the test one. The
``prob_<class>`` columns are the softmax of the SVM decision values: valid probabilities
whose argmax is the prediction, but not calibrated (CalibratedClassifierCV needs several
samples of each class in every inner fold, which small LOSO training sets do not have).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mer_utils.errors import ConfigError, PreprocessError

MAX_POINTS = 16  # the code lookup table has 2**n_points entries


def n_uniform_bins(n_points: int) -> int:
    """Number of non-rotation-invariant uniform LBP labels: P(P-1)+3 (59 for P = 8)."""
    return n_points * (n_points - 1) + 3


@lru_cache(maxsize=None)
def _uniform_lookup(n_points: int) -> np.ndarray:
    """Map every raw P-bit code to its ``nri_uniform`` label (scikit-image's numbering).

    Uniform codes (at most two 0/1 changes around the circle) get a label from their
    number of ones and rotation; all other codes share the last label P(P-1)+2.
    """
    p = n_points
    codes = np.arange(2**p)
    bits = (codes[:, None] >> np.arange(p)) & 1
    changes = (bits != np.roll(bits, -1, axis=1)).sum(axis=1)
    n_ones = bits.sum(axis=1)
    first_one = np.argmax(bits == 1, axis=1)
    first_zero = np.argmax(bits == 0, axis=1)
    rotation = np.where(first_one == 0, n_ones - first_zero, p - first_one)
    labels = 1 + (n_ones - 1) * p + rotation
    labels = np.where(n_ones == 0, 0, labels)
    labels = np.where(n_ones == p, p * (p - 1) + 1, labels)
    labels = np.where(changes > 2, p * (p - 1) + 2, labels)
    return labels.astype(np.int64)


def _neighbour_offsets(n_points: int, radius: int) -> list[tuple[float, float]]:
    """(row, col) offsets of the circular neighbours, scikit-image's order and rounding."""
    angles = 2 * np.pi * np.arange(n_points) / n_points
    rows = np.round(-radius * np.sin(angles), 5)
    cols = np.round(radius * np.cos(angles), 5)
    return list(zip(rows.tolist(), cols.tolist()))


def plane_lbp_codes(volume: np.ndarray, row_axis: int, col_axis: int, radius: int = 1,
                    n_points: int = 8) -> np.ndarray:
    """Uniform LBP labels of every 2-D slice of ``volume`` spanned by (row_axis, col_axis).

    Returns an int array with the two plane axes moved last and cropped by ``radius``
    on both sides (interior pixels only); the remaining axes are kept whole. For a 2-D
    image use ``row_axis=0, col_axis=1``.
    """
    v = np.moveaxis(np.asarray(volume, dtype=np.float64), (row_axis, col_axis), (-2, -1))
    n_rows, n_cols = v.shape[-2:]
    r = radius
    if n_rows < 2 * r + 1 or n_cols < 2 * r + 1:
        raise PreprocessError(
            f"a {n_rows}x{n_cols} plane is too small for LBP radius {r} "
            f"(needs at least {2 * r + 1} pixels each way)")

    def shifted(dr: int, dc: int) -> np.ndarray:
        return v[..., r + dr:n_rows - r + dr, r + dc:n_cols - r + dc]

    centre = shifted(0, 0)
    raw = np.zeros(centre.shape, dtype=np.int64)
    for bit, (dr, dc) in enumerate(_neighbour_offsets(n_points, r)):
        r0, r1 = int(np.floor(dr)), int(np.ceil(dr))
        c0, c1 = int(np.floor(dc)), int(np.ceil(dc))
        fr, fc = dr - r0, dc - c0
        top = (1 - fc) * shifted(r0, c0) + fc * shifted(r0, c1)
        bottom = (1 - fc) * shifted(r1, c0) + fc * shifted(r1, c1)
        neighbour = (1 - fr) * top + fr * bottom
        raw |= (neighbour - centre >= 0).astype(np.int64) << bit
    return _uniform_lookup(n_points)[raw]


def _block_index(length: int, n_blocks: int) -> np.ndarray:
    """Block number of each of ``length`` positions for ``n_blocks`` near-equal blocks."""
    edges = np.linspace(0, length, n_blocks + 1)
    return np.searchsorted(edges, np.arange(length), side="right") - 1


def _block_histograms(labels: np.ndarray, block_of_y: np.ndarray, block_of_x: np.ndarray,
                      y_axis: int, x_axis: int, n_blocks_x: int, n_blocks: int,
                      n_bins: int) -> np.ndarray:
    """(n_blocks, n_bins) label counts; ``labels`` has y and x at the given axes."""
    shape = [1] * labels.ndim
    shape[y_axis], shape[x_axis] = len(block_of_y), len(block_of_x)
    y_shape, x_shape = list(shape), list(shape)
    y_shape[x_axis], x_shape[y_axis] = 1, 1
    block = (block_of_y.reshape(y_shape) * n_blocks_x + block_of_x.reshape(x_shape))
    combined = np.broadcast_to(block, labels.shape) * n_bins + labels
    counts = np.bincount(combined.ravel(), minlength=n_blocks * n_bins)
    return counts.reshape(n_blocks, n_bins)


def lbp_top_features(volume: np.ndarray, grid: tuple[int, int] = (5, 5), radius: int = 1,
                     n_points: int = 8) -> np.ndarray:
    """LBP-TOP descriptor of a grey volume (T, H, W): 3 x blocks x bins float32 values.

    Volumes shorter than 2*radius+1 frames are stretched to that length by repeating
    frames (evenly spaced indices), so XT/YT codes exist; such a clip reads as static.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) == 0:
        raise PreprocessError(f"LBP-TOP needs a grey volume (T, H, W); got shape {volume.shape}")
    if not (isinstance(radius, (int, np.integer)) and radius >= 1):
        raise ConfigError(f"LBP radius must be an integer >= 1, got {radius!r}")
    if not (isinstance(n_points, (int, np.integer)) and 4 <= n_points <= MAX_POINTS):
        raise ConfigError(f"LBP n_points must be an integer in 4..{MAX_POINTS}, got {n_points!r}")
    n_blocks_y, n_blocks_x = (int(g) for g in grid)
    if n_blocks_y < 1 or n_blocks_x < 1:
        raise ConfigError(f"LBP-TOP grid must be two positive integers, got {grid!r}")
    t, h, w = volume.shape
    if h // n_blocks_y <= radius or w // n_blocks_x <= radius:
        raise PreprocessError(
            f"a {h}x{w} frame is too small for a {n_blocks_y}x{n_blocks_x} grid at radius "
            f"{radius}: every block needs rows and columns more than {radius} pixels wide")
    if t < 2 * radius + 1:
        volume = volume[np.round(np.linspace(0, t - 1, 2 * radius + 1)).astype(int)]

    n_bins = n_uniform_bins(n_points)
    n_blocks = n_blocks_y * n_blocks_x
    by_all, bx_all = _block_index(h, n_blocks_y), _block_index(w, n_blocks_x)
    by_in, bx_in = by_all[radius:h - radius], bx_all[radius:w - radius]
    # plane: (row_axis, col_axis) of the slices, then where y and x sit in the codes array
    xy = plane_lbp_codes(volume, 1, 2, radius, n_points)  # (T, H', W')
    xt = plane_lbp_codes(volume, 0, 2, radius, n_points)  # (H, T', W')
    yt = plane_lbp_codes(volume, 0, 1, radius, n_points)  # (W, T', H')
    histograms = [
        _block_histograms(xy, by_in, bx_in, 1, 2, n_blocks_x, n_blocks, n_bins),
        _block_histograms(xt, by_all, bx_in, 0, 2, n_blocks_x, n_blocks, n_bins),
        _block_histograms(yt, by_in, bx_all, 2, 0, n_blocks_x, n_blocks, n_bins),
    ]
    stacked = np.stack(histograms).astype(np.float64)  # (3, blocks, bins)
    stacked /= stacked.sum(axis=2, keepdims=True)
    return stacked.reshape(-1).astype(np.float32)


def volume_from_crops(crops: np.ndarray, size: int = 128) -> np.ndarray:
    """Grey uint8 volume (T, size, size) from aligned crops (T, H, W, 3) RGB or (T, H, W)."""
    import cv2

    crops = np.asarray(crops)
    if crops.ndim not in (3, 4) or (crops.ndim == 4 and crops.shape[-1] != 3) \
            or crops.shape[0] == 0:
        raise PreprocessError(
            f"expected crops (T, H, W, 3) RGB or (T, H, W) grey; got shape {crops.shape}")
    frames = []
    for frame in crops:
        frame = np.asarray(frame, dtype=np.uint8)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        if grey.shape != (size, size):
            shrinking = grey.shape[0] > size
            grey = cv2.resize(grey, (size, size),
                              interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        frames.append(grey)
    return np.stack(frames)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _check_no_leakage(train: Sequence, test: Sequence, test_subject: str) -> None:
    """The test person must not be in training, under any subject_id spelling."""
    train_people = {(s.dataset, s.subject): s for s in train}
    for sample in test:
        other = train_people.get((sample.dataset, sample.subject))
        if other is not None:
            raise ConfigError(
                f"leakage: test subject {test_subject!r} ({sample.dataset}/{sample.subject}) "
                f"also appears in training as subject_id {other.subject_id!r} "
                f"(clip {other.key}); subject_ids must be consistent")


def lbptop_fold(features: Mapping[str, np.ndarray], samples: Sequence, test_subject: str,
                classes: Sequence[str], C: float = 1.0, seed: int = 0,
                class_weight: str | None = "balanced") -> pd.DataFrame:
    """Train the linear SVM on all subjects but ``test_subject``; predict that subject.

    ``features`` maps ``sample.key`` to its LBP-TOP vector. Returns the predictions table
    (dataset, subject = subject_id, clip, true_label, pred_label, prob_<class>), rows in
    key order. Deterministic for a given ``seed``.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    classes = list(classes)
    samples = sorted(samples, key=lambda s: s.key)
    for sample in samples:
        if sample.label not in classes:
            raise ConfigError(f"{sample.key}: label {sample.label!r} is not one of {classes}")
        if sample.key not in features:
            raise ConfigError(f"{sample.key}: no LBP-TOP feature vector was computed")
    test = [s for s in samples if s.subject_id == test_subject]
    train = [s for s in samples if s.subject_id != test_subject]
    if not test:
        raise ConfigError(f"test subject {test_subject!r} has no samples")
    _check_no_leakage(train, test, test_subject)
    train_labels = sorted({s.label for s in train}, key=classes.index)
    if len(train_labels) < 2:
        raise ConfigError(
            f"fold {test_subject!r}: training set has classes {train_labels}; need at least 2")

    x_train = np.stack([np.asarray(features[s.key], dtype=np.float64) for s in train])
    x_test = np.stack([np.asarray(features[s.key], dtype=np.float64) for s in test])
    y_train = np.array([s.label for s in train])
    model = make_pipeline(StandardScaler(), LinearSVC(C=C, class_weight=class_weight,
                                                      random_state=seed, max_iter=20000))
    model.fit(x_train, y_train)
    scores = model.decision_function(x_test)
    if scores.ndim == 1:  # two training classes: a positive score favours classes_[1]
        scores = np.column_stack([-scores, scores])
    trained = _softmax(scores)
    probabilities = np.zeros((len(test), len(classes)))
    for j, name in enumerate(model.classes_):
        probabilities[:, classes.index(name)] = trained[:, j]
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]

    table = pd.DataFrame({
        "dataset": [s.dataset for s in test],
        "subject": [s.subject_id for s in test],
        "clip": [s.clip for s in test],
        "true_label": [s.label for s in test],
        "pred_label": predicted,
    })
    for j, name in enumerate(classes):
        table[f"prob_{name}"] = probabilities[:, j]
    return table


# --------------------------------------------------------------------------- the feature cache

FRAMES = 10  # at most this many frames, evenly spaced over the clip window
SIZE = 96  # side of the grey aligned crops the features are computed on
DESCRIPTOR = {"grid": (5, 5), "radius": 1, "n_points": 8}  # 5x5 blocks, 59 u2 bins per plane


def frame_numbers(sample, count: int = FRAMES) -> list[int]:
    """Up to ``count`` frame numbers evenly spaced over the clip window (eq. 1-2), both ends in."""
    from mer_utils.preprocess import clip_window

    start, end = clip_window(sample.onset, sample.apex, sample.offset)
    inside = [n for n in sample.frame_numbers if start <= n <= end]
    if not inside:
        raise PreprocessError(f"clip {sample.key}: no frame on disk in its window {start}..{end}")
    picks = np.linspace(0, len(inside) - 1, min(count, len(inside))).round().astype(int)
    return [inside[i] for i in dict.fromkeys(picks.tolist())]


def feature_path(cache_dir, sample, frames: int = FRAMES, size: int = SIZE, face_crop: str = "dlib"):
    """Cache file of a sample's LBP-TOP histogram, keyed like the preprocessed images on the
    content of every frame it reads (its sampled frames, not only the window's key frames)."""
    from mer_utils.preprocess import cache_path

    numbers = frame_numbers(sample, frames)
    params = {"frames": numbers, "size": size, "face_crop": face_crop, **DESCRIPTOR}
    return cache_path(cache_dir, sample, "lbptop", params, frames=numbers).with_suffix(".npy")


def compute_feature(cache_dir, sample, frames: int = FRAMES, size: int = SIZE, face_crop: str = "dlib"):
    """LBP-TOP histogram of the sample's aligned grey crops over its clip window, saved
    atomically in the cache; returns its path."""
    import io

    from mer_utils.files import atomic_write_bytes
    from mer_utils.preprocess import aligned_crops

    path = feature_path(cache_dir, sample, frames, size, face_crop)
    crops = aligned_crops(sample, frame_numbers(sample, frames), size=size, face_crop=face_crop)
    feature = np.asarray(lbp_top_features(volume_from_crops(crops, size=size), **DESCRIPTOR), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, feature)
    return atomic_write_bytes(path, buffer.getvalue())


def prepare_features(samples: Sequence, cache_dir, frames: int = FRAMES, size: int = SIZE, face_crop: str = "dlib",
                     workers: int | None = None, progress: bool = True) -> dict:
    """Compute the missing LBP-TOP features in ``workers`` processes; sample.key -> .npy path."""
    import concurrent.futures as cf
    import multiprocessing
    import os

    from tqdm.auto import tqdm

    from mer_utils.preprocess import cached_file_ok

    paths = {s.key: feature_path(cache_dir, s, frames, size, face_crop) for s in samples}
    todo = [s for s in samples if not cached_file_ok(paths[s.key])]
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="LBP-TOP features",
               unit="clip", disable=not progress)
    try:
        if workers == 1:
            for sample in todo:
                compute_feature(cache_dir, sample, frames, size, face_crop)
                bar.update(1)
        else:
            from mer_utils.files import exit_with_parent

            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=exit_with_parent) as pool:
                futures = [pool.submit(compute_feature, cache_dir, s, frames, size, face_crop) for s in todo]
                for future in cf.as_completed(futures):
                    future.result()
                    bar.update(1)
    finally:
        bar.close()
    return paths
