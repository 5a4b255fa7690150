"""Preprocessing (paper 3.1, docs/method.md 1): window, key frames, ARS/RRS, flows, face crop, cache."""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from mer_utils.data.sample import Sample
from mer_utils.errors import ConfigError, PreprocessError
from mer_utils.face import FaceAligner, apply_matrix
from mer_utils.preprocess import (
    METHODS,
    absolute_residual_sum,
    aligned_crops,
    cache_path,
    clip_window,
    farneback_flow_image,
    flow_to_image,
    infer_apex,
    key_frames,
    load_image,
    load_images,
    preprocess_sample,
    preprocess_samples,
    read_frame,
    relative_residual_sum,
    tvl1_flow_image,
)


# --- helpers: clips built from a real face photo -----------------------------------------


@functools.lru_cache(maxsize=None)
def face_frame(angle: float = 0.0) -> np.ndarray:
    """A 640 x 480 RGB frame with skimage's astronaut face (about 150 px wide) in it."""
    face = cv2.resize(skdata.astronaut()[20:300, 90:370], (480, 480), interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 80:560] = face
    if angle:
        rotation = cv2.getRotationMatrix2D((320, 240), angle, 1.0)
        frame = cv2.warpAffine(frame, rotation, (640, 480), borderMode=cv2.BORDER_REPLICATE)
    return frame


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def make_clip(root: Path, clip: str, numbers=range(1, 13), onset=1, apex=6, offset=12, frame_of=None, subject="sub01"):
    """Write one CASME II-like clip (img<n>.png) and return its Sample. ``frame_of(n)``
    gives frame n; by default the face with a bright patch over the mouth that grows with n."""

    def moving_mouth(n: int) -> np.ndarray:
        frame = face_frame().copy()
        cv2.rectangle(frame, (285, 212), (285 + 4 * (n - onset), 226), (255, 255, 255), -1)
        return frame

    frame_of = frame_of or moving_mouth
    paths = tuple(write_rgb(root / subject / clip / f"img{n}.png", frame_of(n)) for n in numbers)
    return Sample(
        dataset="casme2", subject=subject, clip=clip, emotion="happiness", onset=onset, apex=apex,
        offset=offset, apex_inferred=False, frames=paths, frame_numbers=tuple(numbers),
    )


# --- window and key frames: eq. 1-4 --------------------------------------------------------


def test_infer_apex_is_the_middle_frame():
    assert infer_apex(10, 20) == 15
    assert infer_apex(10, 21) == 15
    assert infer_apex(7, 7) == 7


@pytest.mark.parametrize(
    "onset, apex, offset, expected",
    [
        (46, 50, 80, (46, 56)),  # apex - onset = 4 < 10: end = min(onset + 10, offset)
        (46, 50, 52, (46, 52)),  # ... clamped to the offset
        (46, 56, 90, (46, 56)),  # apex - onset = 10: end = min(apex, offset)
        (46, 70, 90, (46, 70)),
        (46, 70, 60, (46, 60)),  # apex after offset: the offset
    ],
)
def test_clip_window_eq_1_2(onset, apex, offset, expected):
    assert clip_window(onset, apex, offset) == expected


def test_clip_window_rejects_offset_before_onset():
    with pytest.raises(PreprocessError, match="onset 50 is after offset 40"):
        clip_window(50, 45, 40)


@pytest.mark.parametrize(
    "start, end, n_key, expected",
    [
        (46, 59, 5, [49, 52, 55, 58, 59]),  # gap = ceil(13 / 5) = 3, last clamped to end
        (0, 100, 5, [20, 40, 60, 80, 100]),  # gap = 20
        (10, 12, 5, [11, 12, 12, 12, 12]),  # short clip: clamping repeats the end frame
        (10, 13, 2, [12, 13]),  # gap = ceil(3 / 2) = 2
        (5, 9, 1, [9]),
        (7, 7, 3, [7, 7, 7]),  # end == start
    ],
)
def test_key_frames_eq_3_4(start, end, n_key, expected):
    assert key_frames(start, end, n_key) == expected


def test_key_frames_rejects_bad_n_key():
    with pytest.raises(ConfigError, match="n_key"):
        key_frames(0, 10, 0)


# --- residual images: eq. 5-7 ------------------------------------------------------------------


def test_ars_hand_example_eq_5():
    start = np.array([[[10, 200, 0]]], np.uint8)
    keys = [np.array([[[20, 190, 0]]], np.uint8), np.array([[[0, 255, 3]]], np.uint8)]
    # |20-10| + |0-10| = 20;  |190-200| + |255-200| = 65;  0 + 3 = 3
    np.testing.assert_array_equal(absolute_residual_sum(start, keys), [[[20, 65, 3]]])


def test_ars_wraps_at_256():
    start = np.zeros((2, 2, 3), np.uint8)
    keys = [np.full((2, 2, 3), 100, np.uint8)] * 3
    result = absolute_residual_sum(start, keys)
    assert result.dtype == np.uint8
    assert (result == 300 % 256).all() and 300 % 256 == 44


def test_rrs_hand_example_eq_6_7_spans_0_255():
    start = np.zeros((1, 3, 3), np.uint8)
    key = np.arange(0, 90, 10, dtype=np.uint8).reshape(1, 3, 3)  # D = 0..80, min 0, max 80
    result = relative_residual_sum(start, [key])
    # D * 255 / 80 rounded: 10 -> 31.875, 40 -> 127.5 (half to even: 128), 50 -> 159.375
    np.testing.assert_array_equal(result.reshape(-1), [0, 32, 64, 96, 128, 159, 191, 223, 255])
    assert result.min() == 0 and result.max() == 255


def test_rrs_uses_min_and_max_over_the_whole_image():
    start = np.full((1, 2, 3), 50, np.uint8)
    keys = [np.array([[[60, 70, 80], [90, 100, 110]]], np.uint8)] * 2  # D = 20, 40, ..., 120
    np.testing.assert_array_equal(relative_residual_sum(start, keys), [[[0, 51, 102], [153, 204, 255]]])


def test_static_clip_gives_zero_ars_and_zero_rrs_with_a_warning():
    start = face_frame()[:64, :64]
    assert not absolute_residual_sum(start, [start] * 5).any()
    with pytest.warns(UserWarning, match="casme2/sub01/still"):
        rrs = relative_residual_sum(start, [start] * 5, name="casme2/sub01/still")
    assert rrs.dtype == np.uint8 and not rrs.any()


def test_methods_check_their_input_and_share_one_signature():
    assert set(METHODS) == {"ars", "rrs", "farneback", "tvl1"}
    start = np.zeros((4, 4, 3), np.uint8)
    for function in METHODS.values():
        with pytest.raises(PreprocessError, match="clip c1.*uint8"):
            function(start, [np.zeros((4, 5, 3), np.uint8)], name="c1")
        with pytest.raises(PreprocessError, match="no key frames"):
            function(start, [], name="c1")


def test_flow_to_image_hand_example():
    flow = np.array([[[1.0, 0.0], [-2.0, 1.0]]], np.float32)  # u = (1, -2), v = (0, 1): peak 2
    image = flow_to_image(flow)
    # u: 127.5 + 127.5 * u / 2 -> 191.25, 0; v -> 127.5 (half to even 128), 191.25;
    # magnitude: 255 * (1, sqrt 5) / sqrt 5 -> 114.04, 255
    np.testing.assert_array_equal(image, [[[191, 128, 114], [0, 191, 255]]])
    np.testing.assert_array_equal(flow_to_image(np.zeros((2, 2, 2), np.float32)), np.full((2, 2, 3), [128, 128, 0]))


@pytest.mark.parametrize("method", [farneback_flow_image, tvl1_flow_image])
def test_flows_see_a_rightward_shift(method):
    texture = cv2.resize(face_frame()[150:330, 230:410], (64, 64), interpolation=cv2.INTER_AREA)
    moved = np.roll(texture, 2, axis=1)  # content moves 2 px to the right: u > 0, v ~ 0
    image = method(texture, [texture, moved])
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    inner = image[12:-12, 12:-12].astype(float)
    assert inner[..., 0].mean() > 150
    assert abs(inner[..., 1].mean() - 128) < 25


# --- face crop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 12.0])
def test_face_crop_holds_both_eyes_and_the_mouth_with_eyes_level(angle):
    aligner = FaceAligner(size=320).fit(face_frame(angle), clip="casme2/sub01/astro")
    assert aligner.landmarks.shape == (68, 2)
    points = apply_matrix(aligner.matrix, aligner.landmarks)
    assert (points > 0).all() and (points < 320).all()
    right_eye, left_eye, mouth = points[36:42].mean(0), points[42:48].mean(0), points[48:68].mean(0)
    assert abs(right_eye[1] - left_eye[1]) < 1.0  # eye line level even for the tilted frame
    assert right_eye[0] < mouth[0] < left_eye[0]
    assert max(right_eye[1], left_eye[1]) < 160 < mouth[1]
    brows_top = points[17:27, 1].min()
    assert brows_top > 30  # forehead room above the brows
    assert aligner.align(face_frame(angle)).shape == (320, 320, 3)


def test_faceless_frame_raises_naming_clip_and_frame(tmp_path):
    grey = np.full((480, 640, 3), 128, np.uint8)
    sample = make_clip(tmp_path, "EP_blank", numbers=range(1, 4), onset=1, apex=2, offset=3, frame_of=lambda n: grey)
    with pytest.raises(PreprocessError, match=r"casme2/sub01/EP_blank.*no face.*img1\.png"):
        preprocess_sample(sample, "ars")


def test_corrupt_frame_raises_naming_clip_and_file(tmp_path):
    sample = make_clip(tmp_path, "EP_bad", numbers=range(1, 4), onset=1, apex=2, offset=3)
    sample.frames[2].write_bytes(b"not an image at all")
    with pytest.raises(PreprocessError, match=r"casme2/sub01/EP_bad.*img3\.png"):
        preprocess_sample(sample, "ars", face_crop="none", size=64)


def test_aligned_crops_use_one_transform_for_all_frames(tmp_path):
    sample = make_clip(tmp_path, "EP_crops")
    crops = aligned_crops(sample, [1, 6, 11], size=96)
    assert crops.shape == (3, 96, 96, 3) and crops.dtype == np.uint8
    start = cv2.cvtColor(cv2.imread(str(sample.frames[0])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(crops[0], FaceAligner(size=96).fit(start).align(start))
    # only the drawn mouth patch differs from the start frame; the face does not jitter
    assert (crops[2] != crops[0]).any(axis=-1).mean() < 0.1


def test_preprocess_sample_ars_of_a_real_clip(tmp_path):
    sample = make_clip(tmp_path, "EP_mouth")  # window 1..11 (apex - onset = 5 < 10), F = 4, 7, 10, 11
    ars = preprocess_sample(sample, "ars", n_key=4, size=160)
    assert ars.shape == (160, 160, 3) and ars.dtype == np.uint8
    changed = ars.max(axis=-1) > 30
    rows, cols = np.nonzero(changed)
    assert 0 < changed.mean() < 0.1 and rows.mean() > 80  # the motion is at the mouth, lower half
    assert preprocess_sample(sample, "rrs", n_key=4, size=160).max() == 255
    none_crop = preprocess_sample(sample, "ars", face_crop="none", size=64)
    assert none_crop.shape == (64, 64, 3)
    with pytest.raises(ConfigError, match="'sift'"):
        preprocess_sample(sample, "sift")


# --- cache and many clips ------------------------------------------------------------------------


def test_cache_hit_miss_and_parameter_change(tmp_path):
    sample = make_clip(tmp_path / "data", "EP_cache")
    cache = tmp_path / "cache"
    first = preprocess_samples([sample], "ars", cache_dir=cache, size=96, workers=1, progress=False)
    assert (first.computed, first.cached) == (1, 0)
    assert first.timings["face"] > 0 and first.timings["decode"] > 0
    path = first.paths[sample.key]
    assert path.is_relative_to(cache / "ars" / "casme2" / "sub01") and path.name.startswith("EP_cache__")
    np.testing.assert_array_equal(load_image(path), preprocess_sample(sample, "ars", size=96))

    again = preprocess_samples([sample], "ars", cache_dir=cache, size=96, workers=1, progress=False)
    assert (again.computed, again.cached) == (0, 1) and again.paths == first.paths

    other_n_key = preprocess_samples([sample], "ars", cache_dir=cache, n_key=3, size=96, workers=1, progress=False)
    assert other_n_key.computed == 1 and other_n_key.paths[sample.key] != path
    np.testing.assert_array_equal(load_image(other_n_key.paths[sample.key]), preprocess_sample(sample, "ars", n_key=3, size=96))

    params = {"n_key": 5, "face_crop": "dlib", "size": 96}
    assert cache_path(cache, sample, "rrs", params) != path
    assert cache_path(cache, sample, "ars", {**params, "size": 95}) != path
    assert cache_path(cache, sample, "ars", {**params, "face_crop": "none"}) != path
    assert cache_path(cache, sample, "ars", params) == path
    # window 1..11 (eq. 2), F = 3, 5, 7, 9, 11 (eq. 3-4): frame 6 is unused, frame 7 is a key frame
    os.utime(sample.frames[5], ns=(1, 1))
    assert cache_path(cache, sample, "ars", params) == path
    os.utime(sample.frames[6], ns=(1, 1))  # a touched key frame, the same content: the same image
    assert cache_path(cache, sample, "ars", params) == path
    # another frame 7 of the same size, its old mtime restored (as cp -p or tar x of another
    # version does): a new key, never the stale image
    data = bytearray(sample.frames[6].read_bytes())
    data[-20] ^= 0xFF  # inside the PNG's last chunks: the same length
    sample.frames[6].write_bytes(bytes(data))
    os.utime(sample.frames[6], ns=(1, 1))
    assert cache_path(cache, sample, "ars", params) != path


def test_a_damaged_cached_image_is_computed_again_with_a_warning(tmp_path):
    sample = make_clip(tmp_path / "data", "EP_damaged")
    cache = tmp_path / "cache"
    path = preprocess_samples([sample], "ars", cache_dir=cache, size=64, face_crop="none", workers=1, progress=False).paths[sample.key]
    reference = load_image(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"cached file .*{path.name} is damaged \(it does not read back\): computing it again"):
        again = preprocess_samples([sample], "ars", cache_dir=cache, size=64, face_crop="none", workers=1, progress=False)
    assert (again.computed, again.cached) == (1, 0)
    np.testing.assert_array_equal(load_image(path), reference)


def test_cache_path_is_sanitised(tmp_path):
    sample = make_clip(tmp_path / "data", "EP_odd", numbers=range(1, 3), onset=1, apex=1, offset=2)
    odd = sample.replace(subject="../sub 01", clip="EP/02 01")
    path = cache_path(tmp_path / "cache", odd, "ars", {"n_key": 5, "face_crop": "none", "size": 64})
    assert path.resolve().is_relative_to((tmp_path / "cache" / "ars" / "casme2").resolve())
    assert path.name.startswith("EP_02_01__")


def test_interrupted_write_is_not_read_as_valid(tmp_path, monkeypatch):
    sample = make_clip(tmp_path / "data", "EP_crash", numbers=range(1, 4), onset=1, apex=2, offset=3)
    cache = tmp_path / "cache"
    path = cache_path(cache, sample, "ars", {"n_key": 5, "face_crop": "none", "size": 64})

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("mer_utils.preprocess.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        preprocess_samples([sample], "ars", cache_dir=cache, face_crop="none", size=64, workers=1, progress=False)
    monkeypatch.undo()
    assert not path.exists() and list(path.parent.iterdir()) == []
    (path.parent / f".{path.stem}.leftover.tmp").write_bytes(b"\x89PNG half a file")  # a killed write's leftover
    result = preprocess_samples([sample], "ars", cache_dir=cache, face_crop="none", size=64, workers=1, progress=False)
    assert result.computed == 1 and result.paths[sample.key] == path
    assert load_image(path).shape == (64, 64, 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_clip_is_named_after_the_others_are_written(tmp_path, workers):
    goods = [make_clip(tmp_path, f"EP_good{i}", numbers=range(1, 4), onset=1, apex=2, offset=3) for i in range(3)]
    bad = make_clip(tmp_path, "EP_corrupt", numbers=range(1, 4), onset=1, apex=2, offset=3)
    bad.frames[0].write_bytes(b"\xff\xd8 truncated")
    cache = tmp_path / "cache"
    with pytest.raises(PreprocessError, match=r"1 of 4 clips failed \(casme2/sub01/EP_corrupt\).*img1\.png"):
        preprocess_samples([bad, *goods], "ars", cache_dir=cache, face_crop="none", size=64, workers=workers, progress=False)
    for good in goods:
        written = cache_path(cache, good, "ars", {"n_key": 5, "face_crop": "none", "size": 64})
        assert load_image(written).shape == (64, 64, 3)


def test_two_workers_match_one_worker_and_relay_warnings(tmp_path):
    samples = [make_clip(tmp_path, f"EP_w{i}", numbers=range(1, 6), onset=1, apex=3, offset=5) for i in range(3)]
    still = make_clip(tmp_path, "EP_still", numbers=range(1, 4), onset=1, apex=2, offset=3, frame_of=lambda n: face_frame())
    serial = preprocess_samples(samples, "rrs", cache_dir=tmp_path / "one", size=64, workers=1, progress=False)
    with pytest.warns(UserWarning, match="casme2/sub01/EP_still"):
        parallel = preprocess_samples(samples + [still], "rrs", cache_dir=tmp_path / "two", size=64, workers=2, progress=False)
    assert parallel.computed == 4 and parallel.timings["residual"] > 0
    images = load_images(parallel)
    assert not images[still.key].any()
    for sample in samples:
        np.testing.assert_array_equal(images[sample.key], load_image(serial.paths[sample.key]))


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="face_crop 'mtcnn'"):
        preprocess_samples([], "ars", cache_dir=tmp_path, face_crop="mtcnn")
    with pytest.raises(ConfigError, match="'optical'"):
        preprocess_samples([], "optical", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="workers"):
        preprocess_samples([], "ars", cache_dir=tmp_path, workers=0)


# --- issue 10: no silent wrong result ---------------------------------------------------------


def write_clip_as(root: Path, clip: str, suffix: str):
    """make_clip's clip with its frames re-encoded as ``suffix`` (JPEG: CASME II, SAMM; BMP: SMIC)."""
    sample = make_clip(root, clip, numbers=range(1, 4), onset=1, apex=2, offset=3)
    if suffix == ".png":
        return sample
    paths = []
    for path in sample.frames:
        converted = path.with_suffix(suffix)
        assert cv2.imwrite(str(converted), cv2.imread(str(path)))
        path.unlink()
        paths.append(converted)
    return sample.replace(frames=tuple(paths))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".tif"])
def test_truncated_frame_that_opencv_half_decodes_is_an_error_naming_the_file(tmp_path, suffix):
    sample = write_clip_as(tmp_path, "EP_cut", suffix)
    key_frame = sample.frames[-1]
    data = key_frame.read_bytes()
    key_frame.write_bytes(data[: len(data) // 2])
    if suffix == ".jpg":  # the silent case: OpenCV returns an image for the half file
        assert cv2.imread(str(key_frame)) is not None
    with pytest.raises(PreprocessError, match=rf"clip casme2/sub01/EP_cut: frame .*img3\{suffix} is truncated"):
        read_frame(key_frame, sample.key)
    with pytest.raises(PreprocessError, match=rf"img3\{suffix} is truncated"):
        preprocess_sample(sample, "ars", face_crop="none", size=64)
    with pytest.raises(PreprocessError, match=rf"img3\{suffix} is truncated"):  # the LBP-TOP reader
        aligned_crops(sample, [1, 2, 3], size=32, face_crop="none")


def test_tiff_with_its_directory_first_and_its_data_cut_is_truncated_and_opencv_stays_quiet(tmp_path, capfd):
    """Pillow writes the directory before the image data (OpenCV after it, the case above): the
    strips' recorded ends are checked. A TIFF OpenCV cannot decode gets the kit's line only,
    without OpenCV's "[ERROR:0@...] TIFF_Error" lines on stderr."""
    from PIL import Image

    path = tmp_path / "img1.tif"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(read_frame(path, "c").shape, (40, 50, 3))
    data = path.read_bytes()
    path.write_bytes(data[:-500])
    with pytest.raises(PreprocessError, match=rf"frame .*img1\.tif is truncated \({len(data) - 500} bytes; its image data ends at byte {len(data)}\)"):
        read_frame(path, "c")
    path.write_bytes(b"II*\x00\x08\x00\x00\x00" + b"\xff" * 64)  # a directory that is not one
    capfd.readouterr()
    with pytest.raises(PreprocessError, match=r"cannot read frame .*img1\.tif \(missing, not an image, or corrupt\)"):
        read_frame(path, "c")
    assert "ERROR" not in capfd.readouterr().err


def test_complete_jpeg_frames_still_read_with_padding_after_the_end_marker(tmp_path):
    sample = write_clip_as(tmp_path, "EP_whole", ".jpg")
    reference = read_frame(sample.frames[0], sample.key)
    sample.frames[0].write_bytes(sample.frames[0].read_bytes() + b"\x00" * 16)
    np.testing.assert_array_equal(read_frame(sample.frames[0], sample.key), reference)


def test_truncated_key_frame_fails_its_clip_and_the_others_are_written(tmp_path):
    good = write_clip_as(tmp_path, "EP_good", ".jpg")
    bad = write_clip_as(tmp_path, "EP_half", ".jpg")
    data = bad.frames[-1].read_bytes()
    bad.frames[-1].write_bytes(data[: len(data) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(PreprocessError, match=r"1 of 2 clips failed \(casme2/sub01/EP_half\); the other images "
                                              r"are written\. .*img3\.jpg is truncated"):
        preprocess_samples([good, bad], "ars", cache_dir=cache, face_crop="none", size=64, workers=1, progress=False)
    assert load_image(cache_path(cache, good, "ars", {"n_key": 5, "face_crop": "none", "size": 64})).shape == (64, 64, 3)
    assert not cache_path(cache, bad, "ars", {"n_key": 5, "face_crop": "none", "size": 64}).exists()


def test_black_key_frame_is_a_visible_warning(tmp_path):
    black = np.zeros((480, 640, 3), np.uint8)
    sample = make_clip(tmp_path, "EP_black", numbers=range(1, 4), onset=1, apex=2, offset=3,
                       frame_of=lambda n: black if n == 3 else face_frame())
    with pytest.warns(UserWarning, match=r"clip casme2/sub01/EP_black: aligned frame 3 \(.*img3\.png\) is nearly uniform"):
        image = preprocess_sample(sample, "ars", size=64)  # the face is found on the start frame
    assert image.shape == (64, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal clip says nothing
        preprocess_sample(make_clip(tmp_path, "EP_fine", numbers=range(1, 4), onset=1, apex=2, offset=3), "ars", size=64)


def test_bad_parameters_and_unwritable_output_fail_before_any_clip_is_computed(tmp_path, monkeypatch):
    sample = make_clip(tmp_path / "data", "EP_param", numbers=range(1, 4), onset=1, apex=2, offset=3)
    computed = []
    monkeypatch.setattr("mer_utils.preprocess._compute_and_write", lambda *a: computed.append(a))
    for name, value, message in (("n_key", 0, "n_key must be a positive integer, got 0"),
                                 ("size", -5, "size must be an integer >= 8, got -5"),
                                 ("size", 0, "size must be an integer >= 8, got 0")):  # not FaceAligner's words
        with pytest.raises(ConfigError, match=message):
            preprocess_samples([sample], "ars", cache_dir=tmp_path / "cache", face_crop="none", progress=False,
                               **{name: value})
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    with pytest.raises(ConfigError, match=r"cache folder .*a-file is a file, not a folder"):
        preprocess_samples([sample], "ars", cache_dir=blocker, face_crop="none", size=64, workers=1, progress=False)
    with pytest.raises(ConfigError, match=r"cannot write to the cache folder .*a-file/cache \(Not a directory\)"):
        preprocess_samples([sample], "ars", cache_dir=blocker / "cache", face_crop="none", size=64, workers=1,
                           progress=False)
    assert computed == [] and blocker.read_text() == "mine"


def test_every_clip_failing_does_not_claim_images_were_written(tmp_path):
    bad = make_clip(tmp_path, "EP_all_bad", numbers=range(1, 4), onset=1, apex=2, offset=3)
    bad.frames[0].write_bytes(b"not an image")
    with pytest.raises(PreprocessError, match=r"1 of 1 clips failed \(casme2/sub01/EP_all_bad\); no image was written"):
        preprocess_samples([bad], "ars", cache_dir=tmp_path / "cache", face_crop="none", size=64, workers=1,
                           progress=False)


def test_tvl1_without_opencvs_contrib_build_says_what_to_install(monkeypatch):
    """docs/method.md: another OpenCV package installed beside the contrib build hides cv2.optflow."""
    import cv2

    from mer_utils.preprocess import tvl1_flow_image

    monkeypatch.delattr(cv2, "optflow")
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(PreprocessError, match=r"^TV-L1 needs OpenCV's contrib build \(cv2.optflow is missing\): "
                                              r".*reinstall opencv-contrib-python-headless$"):
        tvl1_flow_image(frame, [frame, frame])
