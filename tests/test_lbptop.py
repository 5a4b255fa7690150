"""LBP-TOP features and the linear-SVM fold of the MEGC2019 baseline."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from skimage.feature import local_binary_pattern

from mer_utils.baselines.lbptop import (
    feature_path,
    frame_numbers,
    lbp_top_features,
    lbptop_fold,
    n_uniform_bins,
    plane_lbp_codes,
    volume_from_crops,
)
from mer_utils.data.sample import Sample
from mer_utils.errors import ConfigError, PreprocessError
from mer_utils.evaluate import compute_metrics

CLASSES = ("left", "right")


def smooth_texture(shape, seed=0):
    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 1.5)
    return ((field - field.min()) / (field.max() - field.min()) * 255).astype(np.uint8)


def test_feature_length_is_planes_blocks_bins_and_each_histogram_sums_to_one():
    volume = np.random.default_rng(0).integers(0, 256, (6, 40, 40), dtype=np.uint8)
    features = lbp_top_features(volume, grid=(5, 5))
    assert n_uniform_bins(8) == 59
    assert features.dtype == np.float32
    assert features.shape == (3 * 25 * 59,)
    np.testing.assert_allclose(features.reshape(3, 25, 59).sum(axis=2), 1.0, rtol=1e-6)


def test_constant_volume_puts_every_code_in_the_all_ones_bin():
    features = lbp_top_features(np.full((5, 30, 30), 77, np.uint8), grid=(2, 3))
    histograms = features.reshape(3, 6, 59)
    all_ones_label = 8 * 7 + 1  # every neighbour >= centre: the uniform "all ones" label, 57
    assert np.all(histograms[:, :, all_ones_label] == 1.0)
    assert histograms.sum() == pytest.approx(18.0)


def test_hand_checked_code_on_a_3x3_pattern():
    # centre 50, top row 200, rest 0. Neighbours counter-clockwise from the right (bit 0):
    # right 0 -> 0; up-right (bilinear at (-0.707, +0.707)) = 0.707*200 + 0.293*14.6 = 146
    # -> 1; up 200 -> 1; up-left 146 -> 1; left, down-left, down, down-right -> 0.
    # Raw code 0b00001110: three ones starting at bit 1, a uniform pattern with label
    # 1 + (ones - 1) * P + (P - first_one) = 1 + 2*8 + 7 = 24.
    image = np.zeros((3, 3), np.uint8)
    image[1, 1] = 50
    image[0, :] = 200
    assert plane_lbp_codes(image, 0, 1).tolist() == [[24]]
    assert local_binary_pattern(image, 8, 1, "default")[1, 1] == 14
    assert local_binary_pattern(image, 8, 1, "nri_uniform")[1, 1] == 24


@pytest.mark.parametrize("radius,n_points", [(1, 8), (2, 8), (2, 12)])
def test_vectorised_codes_equal_scikit_image_on_interior_pixels(radius, n_points):
    image = np.random.default_rng(radius + n_points).integers(0, 256, (30, 37), dtype=np.uint8)
    expected = local_binary_pattern(image, n_points, radius, "nri_uniform")
    r = radius
    np.testing.assert_array_equal(plane_lbp_codes(image, 0, 1, radius, n_points),
                                  expected[r:-r, r:-r])


def test_xt_slices_of_a_volume_equal_scikit_image_per_row():
    volume = np.random.default_rng(3).integers(0, 256, (7, 9, 11), dtype=np.uint8)
    codes = plane_lbp_codes(volume, 0, 2)  # (H, T-2, W-2)
    for y in range(volume.shape[1]):
        expected = local_binary_pattern(volume[:, y, :], 8, 1, "nri_uniform")[1:-1, 1:-1]
        np.testing.assert_array_equal(codes[y], expected)


def test_motion_changes_xt_and_yt_histograms_far_more_than_xy():
    texture = smooth_texture((48, 80))
    static = np.stack([texture[:, :48]] * 8)
    moving = np.stack([texture[:, 2 * t:2 * t + 48] for t in range(8)])  # 2 px per frame
    a = lbp_top_features(static, grid=(1, 1)).reshape(3, 59)
    b = lbp_top_features(moving, grid=(1, 1)).reshape(3, 59)
    xy, xt, yt = np.abs(a - b).sum(axis=1)  # L1 distance per plane, 0..2
    assert xy < 0.2  # same texture, slightly different windows
    assert xt > 1.0 and yt > 1.0


def test_short_volume_is_stretched_to_three_frames():
    frames = smooth_texture((2, 24, 24), seed=4)
    features = lbp_top_features(frames[:1], grid=(2, 2))
    repeated = lbp_top_features(np.repeat(frames[:1], 3, axis=0), grid=(2, 2))
    np.testing.assert_array_equal(features, repeated)
    assert lbp_top_features(frames, grid=(2, 2)).shape == (3 * 4 * 59,)


def test_bad_volumes_and_parameters_are_clear_errors():
    with pytest.raises(PreprocessError, match=r"\(T, H, W\)"):
        lbp_top_features(np.zeros((4, 4), np.uint8))
    with pytest.raises(PreprocessError, match="too small"):
        lbp_top_features(np.zeros((4, 8, 8), np.uint8), grid=(5, 5))
    with pytest.raises(ConfigError, match="radius"):
        lbp_top_features(np.zeros((4, 20, 20), np.uint8), radius=0)


def test_volume_from_crops_is_grey_and_resized():
    crops = np.zeros((4, 64, 64, 3), np.uint8)
    crops[..., 0] = 255  # pure red: grey 0.299 * 255 = 76
    volume = volume_from_crops(crops, size=32)
    assert volume.shape == (4, 32, 32) and volume.dtype == np.uint8
    assert np.all(volume == 76)
    with pytest.raises(PreprocessError, match="expected crops"):
        volume_from_crops(np.zeros((4, 8, 8, 2), np.uint8))


def test_the_feature_cache_key_covers_every_frame_lbptop_reads(tmp_path):
    """LBP-TOP reads its sampled frames, not only the window's key frames: changing any of them
    changes the cached feature's path (before, an edited frame 8 of 1..11 left it as it was)."""
    numbers = range(1, 12)
    frames = []
    for n in numbers:
        frames.append(tmp_path / f"img{n}.png")
        frames[-1].write_bytes(bytes([n]) * 64)
    sample = Sample(dataset="casme2", subject="sub01", clip="EP01", emotion="others", onset=1, apex=11, offset=11,
                    apex_inferred=False, frames=tuple(frames), frame_numbers=tuple(numbers))
    assert frame_numbers(sample, 10) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    before = feature_path(tmp_path / "cache", sample, 10, 32, "none")
    frames[7].write_bytes(bytes([99]) * 64)  # frame 8: sampled by LBP-TOP, not a key frame of eq. 3-4 (3, 5, 7, 9, 11)
    assert feature_path(tmp_path / "cache", sample, 10, 32, "none") != before
    middle = feature_path(tmp_path / "cache", sample, 10, 32, "none")
    frames[5].write_bytes(bytes([98]) * 64)  # frame 6: not sampled, so not read
    assert feature_path(tmp_path / "cache", sample, 10, 32, "none") == middle


# ----------------------------------------------------------------------- the fold


def moving_bar(direction: int, rng, size=24, frames=7):
    """A bright vertical bar sweeping left (-1) or right (+1) over noisy background."""
    background = rng.integers(40, 90)
    volume = rng.normal(background, 6, (frames, size, size))
    start = rng.integers(4, 8) if direction > 0 else size - rng.integers(8, 12)
    for t in range(frames):
        x = start + direction * 2 * t
        volume[t, :, x:x + 3] += rng.integers(80, 140)
    return np.clip(volume, 0, 255).astype(np.uint8)


def make_sample(subject, clip, label, subject_id=None):
    return Sample(dataset="casme2", subject=subject, clip=clip, emotion=label, onset=1, apex=2,
                  offset=3, apex_inferred=False, frames=(Path("f1.jpg"),), frame_numbers=(1,),
                  label=label, subject_id=subject_id or subject)


@pytest.fixture(scope="module")
def bar_dataset():
    rng = np.random.default_rng(0)
    samples, features = [], {}
    for s in range(1, 5):
        for k in range(6):
            label = CLASSES[k % 2]
            sample = make_sample(f"sub0{s}", f"EP{k:02d}", label)
            volume = moving_bar(-1 if label == "left" else 1, rng)
            samples.append(sample)
            features[sample.key] = lbp_top_features(volume, grid=(2, 2))
    return samples, features


def test_fold_on_moving_bars_beats_chance_with_valid_probabilities(bar_dataset):
    samples, features = bar_dataset
    tables = [lbptop_fold(features, samples, f"sub0{s}", CLASSES) for s in range(1, 5)]
    for subject, table in zip(range(1, 5), tables):
        assert list(table.columns) == ["dataset", "subject", "clip", "true_label",
                                       "pred_label", "prob_left", "prob_right"]
        assert set(table["subject"]) == {f"sub0{subject}"} and len(table) == 6
        probs = table[["prob_left", "prob_right"]].to_numpy()
        assert np.all((probs >= 0) & (probs <= 1))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert list(table["pred_label"]) == [CLASSES[i] for i in probs.argmax(axis=1)]
    metrics = compute_metrics(pd.concat(tables, ignore_index=True), CLASSES)
    assert metrics["n"] == 24
    assert metrics["accuracy"] >= 0.75  # chance is 0.5


def test_fold_is_deterministic(bar_dataset):
    samples, features = bar_dataset
    first = lbptop_fold(features, samples, "sub02", CLASSES, seed=3)
    second = lbptop_fold(features, list(reversed(samples)), "sub02", CLASSES, seed=3)
    assert first.equals(second)


def test_leakage_check_fires_when_the_test_person_is_in_training(bar_dataset):
    samples, features = bar_dataset
    # the same person (casme2/sub01) under a second subject_id spelling leaks into training
    leaked = [s.replace(subject_id="casme2/sub01") if s.clip == "EP00" and s.subject == "sub01"
              else s for s in samples]
    with pytest.raises(ConfigError, match=r"leakage.*casme2/sub01/EP00"):
        lbptop_fold(features, leaked, "sub01", CLASSES)


def test_fold_errors_name_the_problem(bar_dataset):
    samples, features = bar_dataset
    with pytest.raises(ConfigError, match="sub09"):
        lbptop_fold(features, samples, "sub09", CLASSES)
    partial = {k: v for k, v in features.items() if k != "casme2/sub03/EP01"}
    with pytest.raises(ConfigError, match="casme2/sub03/EP01"):
        lbptop_fold(partial, samples, "sub01", CLASSES)
    with pytest.raises(ConfigError, match="'left'"):
        lbptop_fold(features, samples, "sub01", ("right", "up"))
