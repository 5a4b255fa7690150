"""Synthetic datasets: plan, native layouts and sheets, faces dlib finds, motion where expected,
determinism, and never overwriting user data."""
from __future__ import annotations

import csv
import json
import re
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest

from mer_utils import synth
from mer_utils.errors import ConfigError, DataWarning
from mer_utils.synth import (
    CASME2_HEADER,
    MARKER_NAME,
    SAMM_HEADER,
    make_synthetic,
    plan_synthetic,
)

FOLDERS = {"casme2": "CASME2", "samm": "SAMM", "smic": "SMIC"}
NAME_PATTERNS = {
    "casme2": (re.compile(r"^sub\d{2}$"), re.compile(r"^EP\d{2}_\d{2}f?$"), re.compile(r"^img(\d+)\.jpg$")),
    "samm": (re.compile(r"^\d{3}$"), re.compile(r"^(\d{3})_\d_\d+$"), re.compile(r"^(\d{3})_(\d{5})\.jpg$")),
    "smic": (re.compile(r"^s\d+$"), re.compile(r"^(s\d+)_(ne|po|sur)_\d{2}$"), re.compile(r"^image(\d{6})\.bmp$")),
}
COMPOSITE = {  # emotion (lower case) -> MEGC2019 class, docs/method.md section 3
    "casme2": {"disgust": 0, "repression": 0, "happiness": 1, "surprise": 2},
    "samm": {"anger": 0, "contempt": 0, "disgust": 0, "fear": 0, "sadness": 0, "happiness": 1, "surprise": 2},
    "smic": {"negative": 0, "positive": 1, "surprise": 2},
}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """The default small set, rendered once by two worker processes."""
    root = tmp_path_factory.mktemp("synthetic")
    counts = make_synthetic(root, workers=2, progress=False)
    assert counts == {d: sum(s.dataset == d for s in plan_synthetic()) for d in FOLDERS}
    return root


@pytest.fixture(scope="module")
def dlib_models():

    from mer_utils.face import load_face_models
    return load_face_models()


def clip_dir(root: Path, spec) -> Path:
    return root / FOLDERS[spec.dataset] / spec.folder


def read_grey(root: Path, spec, number: int) -> np.ndarray:
    image = cv2.imread(str(clip_dir(root, spec) / spec.frame_name(number)), cv2.IMREAD_GRAYSCALE)
    assert image is not None, f"{spec.key}: frame {number} unreadable"
    return image


def region(landmarks: np.ndarray, indices, margin: float) -> tuple[slice, slice]:
    points = landmarks[list(indices)]
    (x0, y0), (x1, y1) = points.min(axis=0) - margin, points.max(axis=0) + margin
    return slice(int(y0), int(y1) + 1), slice(int(x0), int(x1) + 1)


# ----------------------------------------------------------------------------- plans


def test_small_plan_has_every_class_per_dataset_and_short_clips():
    plan = plan_synthetic()
    by_dataset = {d: [s for s in plan if s.dataset == d] for d in FOLDERS}
    assert {d: len(v) for d, v in by_dataset.items()} == {"casme2": 37, "samm": 16, "smic": 15}
    assert {d: len({s.subject for s in v}) for d, v in by_dataset.items()} == {"casme2": 6, "samm": 4, "smic": 4}
    for dataset, clips in by_dataset.items():
        classes = {COMPOSITE[dataset].get(s.emotion.lower()) for s in clips} - {None}
        assert classes == {0, 1, 2}, dataset
    five = {"others", "disgust", "happiness", "repression", "surprise"}
    per_subject = Counter(s.subject for s in by_dataset["casme2"] if s.emotion in five)
    complete = [subj for subj in per_subject
                if {s.emotion for s in by_dataset["casme2"] if s.subject == subj} == five]
    assert len(complete) >= 4
    for spec in plan:
        shortest, longest = synth.SMALL_LENGTHS[synth.FPS[spec.dataset]]
        assert shortest <= spec.n_frames <= longest, spec
        assert spec.onset < spec.apex < spec.offset, spec
    assert sum(not s.apex_written for s in plan) == synth.APEX_UNWRITTEN_ROWS
    assert len({s.key for s in plan}) == len(plan)


def test_full_plan_covers_the_official_megc2019_list_with_matching_emotions():
    plan = plan_synthetic(full=True)
    by_key = {s.key: s for s in plan}
    assert len(by_key) == len(plan)
    with open(synth.OFFICIAL_LIST, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 442
    for row in rows:
        dataset, subject, clip = row["dataset"], row["subject"], row["clip"]
        if dataset == "smic":  # the list writes s01/s01_ne_01, the disk s1/s1_ne_01
            subject = f"s{int(subject[1:])}"
            clip = subject + clip[clip.index("_"):]
        spec = by_key.get(f"{dataset}/{subject}/{clip}")
        assert spec is not None, f"official list row {row} has no planned clip"
        assert COMPOSITE[dataset].get(spec.emotion.lower()) == int(row["label"]), (row, spec.emotion)
    casme2 = [s for s in plan if s.dataset == "casme2"]
    assert len(casme2) == 255 and len({s.subject for s in casme2}) == 26
    assert Counter(s.emotion for s in casme2) == {"others": 99, "disgust": 63, "happiness": 32,
                                                  "repression": 27, "surprise": 25, "sadness": 7, "fear": 2}
    samm = [s for s in plan if s.dataset == "samm"]
    assert len(samm) == 159 and Counter(s.emotion for s in samm)["Other"] == 26
    assert len([s for s in plan if s.dataset == "smic"]) == 164
    for spec in plan:
        shortest, longest = synth.FULL_LENGTHS[synth.FPS[spec.dataset]]
        assert shortest <= spec.n_frames <= longest, spec
    assert sum(not s.apex_written for s in casme2) == synth.APEX_UNWRITTEN_ROWS


def test_plan_is_seeded_and_subjects_override_keeps_the_first_subjects():
    assert plan_synthetic(seed=3) == plan_synthetic(seed=3)
    assert plan_synthetic(seed=3) != plan_synthetic(seed=4)
    one = plan_synthetic(datasets=("smic",), subjects=1)
    assert {s.subject for s in one} == {"s1"}
    assert one == [s for s in plan_synthetic(datasets=("smic",)) if s.subject == "s1"]


# ----------------------------------------------------------------------------- files on disk


def test_layout_file_names_and_consecutive_frames(small_set):
    for spec in plan_synthetic():
        subject_re, clip_re, frame_re = NAME_PATTERNS[spec.dataset]
        assert subject_re.match(spec.subject) and clip_re.match(spec.clip), spec.key
        files = sorted(p.name for p in clip_dir(small_set, spec).iterdir())
        numbers = []
        for name in files:
            match = frame_re.match(name)
            assert match, f"{spec.key}: unexpected file {name}"
            if spec.dataset == "samm":
                assert match.group(1) == spec.subject
            numbers.append(int(match.groups()[-1]))
        assert sorted(numbers) == list(range(spec.onset, spec.offset + 1)), spec.key
        image = cv2.imread(str(clip_dir(small_set, spec) / spec.frame_name(spec.onset)), cv2.IMREAD_UNCHANGED)
        assert image.shape == ((480, 640) if spec.dataset == "samm" else (480, 640, 3)), spec.key
    smic_clip = small_set / "SMIC/HS/s1/micro/negative/s1_ne_01"
    assert smic_clip.is_dir() and any(smic_clip.glob("image*.bmp"))
    assert (small_set / "CASME2/CASME2_RAW_selected/sub01").is_dir()
    assert (small_set / "SAMM/006").is_dir()
    assert not list(small_set.glob(".*partial"))


def test_casme2_sheet_header_with_blank_cells_and_rows_as_planned(small_set):
    sheet = openpyxl.load_workbook(small_set / "CASME2" / synth.CASME2_ANNOTATION).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0] == CASME2_HEADER
    assert rows[0][2] is None and rows[0][6] is None
    plan = [s for s in plan_synthetic() if s.dataset == "casme2"]
    assert len(rows) - 1 == len(plan)
    for row, spec in zip(rows[1:], plan):
        subject, filename, _, onset, apex, offset, _, _, emotion = row
        assert (f"sub{subject:02d}", filename, onset, offset, emotion) == (
            spec.subject, spec.clip, spec.onset, spec.offset, spec.emotion)
        assert apex == (spec.apex if spec.apex_written else "/")
    assert sum(row[4] == "/" for row in rows[1:]) == synth.APEX_UNWRITTEN_ROWS


def test_samm_sheet_has_13_preamble_rows_then_the_header(small_set):
    sheet = openpyxl.load_workbook(small_set / "SAMM" / synth.SAMM_ANNOTATION).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][0] and "SAMM" in rows[0][0]
    assert all("Subject" not in row for row in rows[:13])
    assert rows[13] == SAMM_HEADER
    plan = [s for s in plan_synthetic() if s.dataset == "samm"]
    assert len(rows) - 14 == len(plan)
    for row, spec in zip(rows[14:], plan):
        assert row[0] == int(spec.subject) and isinstance(row[0], int)
        assert row[1:6] == (spec.clip, int(spec.clip.split("_")[1]), spec.onset, spec.apex, spec.offset)
        assert row[6] == spec.n_frames and row[10] == spec.emotion


def test_marker_records_the_parameters(small_set):
    marker = json.loads((small_set / "SAMM" / MARKER_NAME).read_text())
    assert marker["params"] == {"version": synth.GENERATOR_VERSION, "full": False, "amplitude": 3.0,
                                "noise": 2.0, "seed": 0, "subjects": None}
    assert marker["clips"] == 16


# ----------------------------------------------------------------------------- content


def test_dlib_finds_one_face_in_every_subject(small_set, dlib_models):
    detector, _ = dlib_models
    first_clip = {}
    for spec in plan_synthetic():
        first_clip.setdefault((spec.dataset, spec.subject), spec)
    assert len(first_clip) == 14
    for spec in first_clip.values():
        for number in (spec.onset, spec.apex):
            faces = detector(read_grey(small_set, spec, number), 0)
            assert len(faces) == 1, f"{spec.key} frame {number}: dlib found {len(faces)} faces"


def test_motion_is_at_the_mouth_for_happiness_and_at_the_brows_for_surprise(small_set, dlib_models):
    """Mean |apex - onset| near the mouth (landmarks 48-67) vs near the brows (17-26)."""
    detector, predictor = dlib_models
    checked = Counter()
    for spec in plan_synthetic():
        if spec.movement not in ("lip_corner_pull", "brow_raise"):
            continue
        onset = read_grey(small_set, spec, spec.onset)
        apex = read_grey(small_set, spec, spec.apex)
        shape = predictor(onset, detector(onset, 0)[0])
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
        margin = 0.05 * np.linalg.norm(landmarks[16] - landmarks[0])
        residual = np.abs(apex.astype(float) - onset)
        mouth = residual[region(landmarks, range(48, 68), margin)].mean()
        brows = residual[region(landmarks, range(17, 27), margin)].mean()
        if spec.movement == "lip_corner_pull":
            assert mouth > 1.15 * brows, f"{spec.key} ({spec.emotion}): mouth {mouth:.2f}, brows {brows:.2f}"
        else:
            assert brows > 1.15 * mouth, f"{spec.key} ({spec.emotion}): brows {brows:.2f}, mouth {mouth:.2f}"
        checked[(spec.dataset, spec.movement)] += 1
    assert len(checked) == 6  # both movements in each of the three datasets


def test_amplitude_zero_leaves_only_noise_and_drift(tmp_path, dlib_models):
    """Same seed, amplitude 0 vs 3: noise and head drift are shared, so the two sets are equal
    wherever the movement envelope is 0 (onset, offset) and differ at the apex only where the
    movement is (around its landmarks)."""
    detector, predictor = dlib_models
    options = dict(datasets=("casme2",), subjects=1, workers=1, progress=False)
    make_synthetic(tmp_path / "still", amplitude=0.0, **options)
    make_synthetic(tmp_path / "moving", amplitude=3.0, **options)
    for spec in plan_synthetic(datasets=("casme2",), subjects=1):
        still, moving = tmp_path / "still", tmp_path / "moving"
        for number in (spec.onset, spec.offset):
            assert np.array_equal(read_grey(still, spec, number), read_grey(moving, spec, number)), spec.key
        onset = read_grey(still, spec, spec.onset)
        shape = predictor(onset, detector(onset, 0)[0])
        landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
        face_width = np.linalg.norm(landmarks[16] - landmarks[0])
        moved = {index for indices, _ in synth.MOVEMENTS[spec.movement][1] for index in indices}
        moved |= {synth.SIDED_MOVEMENTS.get(spec.movement, {}).get(i, i) for i in moved}
        inside = np.zeros(onset.shape, bool)
        inside[region(landmarks, moved, 0.25 * face_width)] = True
        change = np.abs(read_grey(moving, spec, spec.apex).astype(float) - read_grey(still, spec, spec.apex))
        assert change[inside].max() >= 5, spec.key
        assert change[~inside].mean() < 0.05 * change[inside].mean(), spec.key


def test_same_seed_same_pixels_whatever_the_workers(tmp_path):
    options = dict(datasets=("smic",), subjects=1, progress=False)
    make_synthetic(tmp_path / "a", seed=7, workers=1, **options)
    make_synthetic(tmp_path / "b", seed=7, workers=2, **options)
    make_synthetic(tmp_path / "c", seed=8, workers=1, **options)
    plan_a, plan_c = plan_synthetic(seed=7, **{k: options[k] for k in ("datasets", "subjects")}), \
        plan_synthetic(seed=8, **{k: options[k] for k in ("datasets", "subjects")})
    for spec in plan_a:
        for number in range(spec.onset, spec.offset + 1):
            a = cv2.imread(str(clip_dir(tmp_path / "a", spec) / spec.frame_name(number)))
            b = cv2.imread(str(clip_dir(tmp_path / "b", spec) / spec.frame_name(number)))
            assert np.array_equal(a, b), f"{spec.key} frame {number}"
    first_a, first_c = plan_a[0], plan_c[0]
    a = cv2.imread(str(clip_dir(tmp_path / "a", first_a) / first_a.frame_name(first_a.onset)))
    c = cv2.imread(str(clip_dir(tmp_path / "c", first_c) / first_c.frame_name(first_c.onset)))
    assert not np.array_equal(a, c)


# ----------------------------------------------------------------------------- safety


def test_refuses_a_folder_it_did_not_write(tmp_path):
    user_file = tmp_path / "SMIC" / "HS" / "notes.txt"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("my real data")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not written by make_synthetic"):
            make_synthetic(tmp_path, datasets=("smic",), subjects=1, workers=1, progress=False,
                           overwrite=overwrite)
    assert user_file.read_text() == "my real data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMIC"]


def test_rerun_reuses_and_overwrite_replaces_only_its_own_folder(tmp_path):
    options = dict(datasets=("smic",), subjects=1, workers=1, progress=False)
    marker = tmp_path / "SMIC" / MARKER_NAME
    first = make_synthetic(tmp_path, **options)
    assert first == {"smic": 4} and first.reused == ()
    written = marker.stat().st_mtime_ns
    again = make_synthetic(tmp_path, **options)
    assert again == {"smic": 4} and again.reused == ("smic",)
    assert marker.stat().st_mtime_ns == written  # same parameters: returned early
    with pytest.raises(ConfigError, match="overwrite=True"):
        make_synthetic(tmp_path, amplitude=1.0, **options)
    assert make_synthetic(tmp_path, amplitude=1.0, overwrite=True, **options).reused == ()
    assert json.loads(marker.read_text())["params"]["amplitude"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMIC"]


def test_an_interrupted_run_leaves_no_complete_looking_folder(tmp_path, monkeypatch):
    options = dict(datasets=("smic",), subjects=1, workers=1, progress=False)
    render = synth._render_clip
    calls = []

    def failing_render(spec, folder, amplitude):
        calls.append(spec.key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return render(spec, folder, amplitude)

    monkeypatch.setattr(synth, "_render_clip", failing_render)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path, **options)
    assert not (tmp_path / "SMIC").exists()
    monkeypatch.setattr(synth, "_render_clip", render)
    assert make_synthetic(tmp_path, **options) == {"smic": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SMIC"]


@pytest.mark.parametrize("bad, message", [
    (dict(datasets=("casme3",)), r"datasets \['casme3'\]: expected a non-empty subset of casme2, samm, smic"),
    (dict(amplitude=-1.0), r"amplitude must be a finite number >= 0, got -1.0"),
    (dict(noise=float("nan")), r"noise must be a finite number >= 0, got nan"),
    (dict(workers=0), r"workers must be a positive whole number, got 0"),
    (dict(subjects=0), r"subjects must be a positive whole number or None, got 0"),
    (dict(seed=-1), r"seed must be a whole number >= 0, got -1")])
def test_bad_arguments_raise_config_error(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        make_synthetic(tmp_path, progress=False, **bad)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- readers


def test_readers_load_the_small_set(small_set):
    from mer_utils.data import load_samples

    plan = {s.key: s for s in plan_synthetic()}
    five = load_samples(small_set, "casme2-5class")
    assert len(five) == sum(s.dataset == "casme2" for s in plan.values())
    for sample in five:
        spec = plan[sample.key]
        assert (sample.onset, sample.offset, sample.label) == (spec.onset, spec.offset, spec.emotion)
        assert sample.apex_inferred == (not spec.apex_written)
        assert sample.apex == spec.apex  # unwritten apexes move at the middle frame the reader infers
        assert sample.frame_numbers == tuple(range(spec.onset, spec.offset + 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="megc2019 without a sample list")
        composite = load_samples(small_set, "megc2019")
    expected = {k for k, s in plan.items() if s.emotion.lower() in COMPOSITE[s.dataset]}
    assert {s.key for s in composite} == expected
    for sample in composite:
        spec = plan[sample.key]
        assert sample.label == ("negative", "positive", "surprise")[COMPOSITE[spec.dataset][spec.emotion.lower()]]
        assert sample.subject_id == f"{spec.dataset}/{spec.subject}"


def test_clips_per_subject_keeps_the_first_clips_of_each_subject():
    full = plan_synthetic(datasets=("casme2",), subjects=3)
    few = plan_synthetic(datasets=("casme2",), subjects=3, clips_per_subject=4)
    for subject in {spec.subject for spec in full}:
        mine = [spec for spec in full if spec.subject == subject]
        assert [spec for spec in few if spec.subject == subject] == mine[:4]
    with pytest.raises(ConfigError, match="clips_per_subject"):
        plan_synthetic(clips_per_subject=0)


def test_synth_cli_makes_a_small_custom_set(tmp_path, capsys):
    from mer_utils.cli import main
    from mer_utils.data import load_samples

    command = ["synth", "--out", str(tmp_path / "d"), "--subjects", "3", "--clips-per-subject", "4",
               "--seed", "1", "--workers", "1"]
    assert main(command) == 0
    assert "already there" not in capsys.readouterr().out
    assert main(command) == 0  # a second time: reused, and said so
    assert capsys.readouterr().out.strip().endswith(
        "; already there with these parameters (seed 1), left as they were: casme2, samm, smic")
    with pytest.warns(DataWarning, match="megc2019 without a sample list"):  # the composite from the mapping
        samples = load_samples(tmp_path / "d", "megc2019")
    per_subject = {}
    for sample in samples:
        per_subject[sample.subject_id] = per_subject.get(sample.subject_id, 0) + 1
    assert len(per_subject) == 9 and max(per_subject.values()) <= 4  # 3 subjects in each dataset, <= 4 clips each
    assert sorted({(s.dataset, s.subject_id) for s in samples}) == [
        ("casme2", f"casme2/sub0{k}") for k in (1, 2, 3)] + [("samm", f"samm/00{k}") for k in (6, 7, 9)] + [
        ("smic", f"smic/s{k}") for k in (1, 2, 3)]
