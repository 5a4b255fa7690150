"""Synthetic CASME II, SAMM and SMIC-HS in their native layouts, so the kit runs without licensed data.

``make_synthetic(out)`` writes ``out/CASME2``, ``out/SAMM`` and ``out/SMIC`` with the real
sets' folder names, file names, frame rates and annotation files (docs/method.md section 3);
the readers in ``mer_utils.data`` cannot tell them from the real ones except by content.
All frames are 640 x 480 (the real SAMM is 2040 x 1088 grey; we keep its grey JPEGs but
write them at 640 x 480 to stay small).

Content. Every subject is the face photo ``skimage.data.astronaut()`` under its own pose
(rotation up to 8 degrees, scale, position), lighting (gain, gamma, left-right gradient)
and tint, cut out with a soft ellipse and placed on a textured background. Each clip adds a
class-specific local facial movement placed from the 68 dlib landmarks (lip corners up for
happiness, brows up for surprise, upper lip raise for disgust, lip press for repression,
brow lowerer / unilateral lip corner for the other negative emotions), as a smooth field
of Gaussian bumps applied with ``cv2.remap``. Its peak displacement is
``amplitude`` pixels times a per-clip gain in [0.7, 1.3], shaped in time by an envelope that
rises from 0 at onset to 1 at apex and falls back to 0 at offset. Per frame: Gaussian
sensor noise (std ``noise`` grey levels) and a slow head drift of 0.1..0.7 px over the clip
(independent of ``amplitude``: amplitude 0 leaves noise and drift, no facial movement).
The same seed gives the same pixels whatever the number of workers.

Layouts written:
- ``CASME2/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`` and ``CASME2/CASME2-coding-20140508.xlsx``
- ``SAMM/006/006_1_2/006_05562.jpg`` and ``SAMM/SAMM_Micro_FACS_Codes_v2.xlsx`` (13 preamble rows)
- ``SMIC/HS/s1/micro/negative/s1_ne_01/image000123.bmp`` (no spreadsheet)

Each dataset folder holds a marker ``.mer_synthetic.json`` with the generation parameters;
it is what allows ``overwrite=True`` to replace the folder. Folders are written under a
temporary sibling name and renamed when complete.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from mer_utils.data.sample import DATASET_FOLDERS, DATASETS
from mer_utils.errors import ConfigError, DatasetError
from mer_utils.provenance import MARKER_NAME

FPS = {"casme2": 200, "samm": 200, "smic": 100}
FRAME_WIDTH, FRAME_HEIGHT = 640, 480
GENERATOR_VERSION = 1
CASME2_ANNOTATION = "CASME2-coding-20140508.xlsx"
SAMM_ANNOTATION = "SAMM_Micro_FACS_Codes_v2.xlsx"
CASME2_HEADER = ("Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion")
SAMM_HEADER = ("Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
               "Duration", "Micro", "Action Units", "Notes", "Estimated Emotion", "Objective Classes")
SAMM_PREAMBLE_ROWS = 13
OFFICIAL_LIST = Path(__file__).resolve().parent / "resources" / "megc2019_composite.csv"
SMIC_CLASS_FOLDERS = {"ne": "negative", "po": "positive", "sur": "surprise"}
SMIC_LABELS = ("negative", "positive", "surprise")  # MEGC2019 labels 0, 1, 2

# Clip length in frames (onset..offset inclusive). Real micro-expressions last 1/25..1/3 s.
FULL_LENGTHS = {200: (8, 66), 100: (4, 33)}
SMALL_LENGTHS = {200: (8, 24), 100: (4, 12)}
# First frame numbers are drawn from these ranges (SAMM numbers are 5-digit in file names).
ONSET_RANGES = {"casme2": (1, 300), "samm": (1000, 9000), "smic": (1, 900)}

# ----------------------------------------------------------------------------- movements
# A movement is a list of (landmark indices, (dx, dy)) in face axes (x along the eye line,
# y towards the chin), plus a strength in (0, 1]: the peak displacement is
# amplitude * strength * per-clip gain. One-sided movements are written for the subject's
# right side (landmark 48, on the image's left) and mirrored to 54 for the left side.
BROW_IMAGE_LEFT, BROW_IMAGE_RIGHT = tuple(range(17, 22)), tuple(range(22, 27))
UPPER_LIP, LOWER_LIP = (50, 51, 52, 61, 62, 63), (56, 57, 58, 65, 66, 67)
MOVEMENTS: dict[str, tuple[float, list[tuple[tuple[int, ...], tuple[float, float]]]]] = {
    "lip_corner_pull": (1.0, [((48, 49, 59, 60), (-0.5, -1.0)), ((54, 53, 55, 64), (0.5, -1.0))]),  # AU12
    "brow_raise": (1.0, [(BROW_IMAGE_LEFT + BROW_IMAGE_RIGHT, (0.0, -1.0)), ((57, 66), (0.0, 0.35))]),  # AU1+2(+26)
    "upper_lip_raise": (1.0, [((31, 32, 33, 34, 35), (0.0, -0.5)), ((50, 51, 52), (0.0, -1.0))]),  # AU9/10
    "lip_press": (1.0, [(UPPER_LIP, (0.0, 0.8)), (LOWER_LIP, (0.0, -0.8))]),  # AU24
    "brow_lower": (1.0, [(BROW_IMAGE_LEFT, (0.5, 1.0)), (BROW_IMAGE_RIGHT, (-0.5, 1.0))]),  # AU4
    "unilateral_lip_corner": (1.0, [((48,), (-0.6, -0.8))]),  # AU14/L12, contempt
    "slight_brow_lower": (0.6, [(BROW_IMAGE_LEFT, (0.3, 1.0)), (BROW_IMAGE_RIGHT, (-0.3, 1.0))]),  # others
    "side_lip_shift": (0.6, [((48, 49, 59), (-1.0, 0.0))]),  # others
}
SIDED_MOVEMENTS = {"unilateral_lip_corner": {48: 54, 49: 53, 59: 55}, "side_lip_shift": {48: 54, 49: 53, 59: 55}}
NEGATIVE_MOVEMENTS = ("upper_lip_raise", "lip_press", "brow_lower")
# Emotion (lower case) -> the movements one of which each clip draws.
EMOTION_MOVEMENTS = {
    "happiness": ("lip_corner_pull",), "positive": ("lip_corner_pull",), "surprise": ("brow_raise",),
    "disgust": ("upper_lip_raise",), "repression": ("lip_press",), "anger": ("brow_lower",),
    "fear": ("brow_lower",), "sadness": ("lip_press",), "contempt": ("unilateral_lip_corner",),
    "negative": NEGATIVE_MOVEMENTS, "others": ("slight_brow_lower", "side_lip_shift"),
    "other": ("slight_brow_lower", "side_lip_shift"),
}
# Action units written in the sheets; one-sided movements get an L/R prefix.
MOVEMENT_AUS = {"lip_corner_pull": "12", "brow_raise": "1+2", "upper_lip_raise": "9+10", "lip_press": "24",
                "brow_lower": "4", "unilateral_lip_corner": "14", "slight_brow_lower": "4", "side_lip_shift": "20"}
SAMM_OBJECTIVE_CLASS = {"happiness": 1, "surprise": 2, "anger": 3, "disgust": 4, "sadness": 5,
                        "fear": 6, "contempt": 7, "other": 7}
# The real sets' emotion counts, used to label the full synthetic sets.
CASME2_NEGATIVE = {"disgust": 63, "repression": 25}  # the 88 negatives of the MEGC2019 list
CASME2_EXTRA = {"others": 99, "repression": 2, "sadness": 7, "fear": 2}  # -> 255 clips
SAMM_NEGATIVE = {"Anger": 57, "Contempt": 12, "Disgust": 9, "Fear": 8, "Sadness": 6}  # 92
SAMM_OTHER = 26  # -> 159 clips
CASME2_SUBJECTS_FULL = tuple(f"sub{n:02d}" for n in range(1, 27))
SAMM_SUBJECTS_FULL = tuple(f"{n:03d}" for n in range(6, 38))
COMPOSITE_EMOTION = {"casme2": {1: "happiness", 2: "surprise"}, "samm": {1: "Happiness", 2: "Surprise"}}

# Small set (full=False): subject -> emotions, every composite class in each dataset.
_FIVE = ("others", "others", "disgust", "happiness", "repression", "surprise")
SMALL_CASME2 = {
    "sub01": _FIVE, "sub02": _FIVE + ("disgust",), "sub03": _FIVE[:4] + ("surprise",),
    "sub04": _FIVE + ("others",), "sub05": _FIVE[:5], "sub06": _FIVE + ("repression",),
}
SMALL_SAMM = {
    "006": ("Anger", "Contempt", "Happiness", "Surprise", "Other"),
    "007": ("Disgust", "Happiness", "Surprise"),
    "009": ("Anger", "Fear", "Happiness", "Surprise"),
    "010": ("Sadness", "Happiness", "Surprise", "Other"),
}
SMALL_SMIC = {
    "s1": ("negative", "negative", "positive", "surprise"),
    "s2": ("negative", "positive", "surprise"),
    "s3": ("negative", "negative", "positive", "positive", "surprise"),
    "s4": ("negative", "positive", "surprise"),
}
APEX_UNWRITTEN_ROWS = 2  # CASME II rows written with apex "/" (the real sheet has a few)


@dataclass(frozen=True)
class ClipSpec:
    """One planned synthetic clip: names as on disk, annotation as written, movement drawn.

    ``apex`` is the frame where the movement peaks; ``apex_written`` is False for the
    CASME II rows whose sheet cell says ``/`` (there the movement peaks at the middle frame,
    the reader's inference). SMIC writes no annotation at all.
    """

    dataset: str
    subject: str  # on disk: sub01, 006, s1
    clip: str  # on disk: EP02_01f, 006_1_2, s1_ne_01
    emotion: str  # as annotated: happiness, Anger, negative
    movement: str  # a key of MOVEMENTS
    side: str  # the subject's "left" or "right" for one-sided movements, else ""
    action_units: str
    onset: int
    apex: int
    offset: int
    apex_written: bool = True

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @property
    def n_frames(self) -> int:
        return self.offset - self.onset + 1

    @property
    def folder(self) -> Path:
        """Clip folder relative to the dataset folder (``CASME2_RAW_selected/sub01/EP02_01f``)."""
        if self.dataset == "casme2":
            return Path("CASME2_RAW_selected", self.subject, self.clip)
        if self.dataset == "samm":
            return Path(self.subject, self.clip)
        return Path("HS", self.subject, "micro", self.emotion, self.clip)

    def frame_name(self, number: int) -> str:
        if self.dataset == "casme2":
            return f"img{number}.jpg"
        if self.dataset == "samm":
            return f"{self.subject}_{number:05d}.jpg"
        return f"image{number:06d}.bmp"


# ----------------------------------------------------------------------------- planning


def _rng(seed: int, *names: str | int) -> np.random.Generator:
    """A generator keyed by the seed and stable names, independent of call order and process."""
    words = [int(seed)] + [zlib.crc32(str(n).encode()) for n in names]
    return np.random.default_rng(words)


def _official_rows(datasets: Iterable[str]) -> list[tuple[str, str, str, int]]:
    """(dataset, subject, clip, label) of the official MEGC2019 list, names in disk spelling."""
    rows = []
    lines = OFFICIAL_LIST.read_text(encoding="utf-8").splitlines()
    for line_number, line in enumerate(lines[1:], start=2):
        dataset, subject, clip, label = (field.strip() for field in line.split(","))
        if dataset not in datasets:
            continue
        if dataset == "smic":  # the list writes s01/s01_ne_01, the disk s1/s1_ne_01
            number = int(subject[1:])
            subject, clip = f"s{number}", f"s{number}_" + clip.split("_", 1)[1]
        if label not in ("0", "1", "2"):
            raise DatasetError(f"{OFFICIAL_LIST} line {line_number}: label {label!r} is not 0, 1 or 2")
        rows.append((dataset, subject, clip, int(label)))
    return rows


def _spread(counts: dict[str, int], rng: np.random.Generator) -> list[str]:
    items = [name for name, count in counts.items() for _ in range(count)]
    return [items[i] for i in rng.permutation(len(items))]


def _new_name(dataset: str, subject: str, taken: set[str], rng: np.random.Generator) -> str:
    """A clip name in the dataset's pattern not yet used by ``subject``."""
    while True:
        if dataset == "casme2":
            name = f"EP{rng.integers(1, 20):02d}_{rng.integers(1, 30):02d}" + ("f" if rng.random() < 0.3 else "")
        else:
            name = f"{subject}_{rng.integers(1, 8)}_{rng.integers(1, 20)}"
        if name not in taken:
            taken.add(name)
            return name


def _named_rows(dataset: str, table: dict[str, tuple[str, ...]], rng: np.random.Generator):
    """(subject, clip, emotion) for a small-set table, names following the dataset's pattern."""
    rows = []
    for subject, emotions in table.items():
        taken: set[str] = set()
        counters: Counter = Counter()
        for emotion in emotions:
            if dataset == "smic":
                abbreviation = {"negative": "ne", "positive": "po", "surprise": "sur"}[emotion]
                counters[abbreviation] += 1
                clip = f"{subject}_{abbreviation}_{counters[abbreviation]:02d}"
            else:
                clip = _new_name(dataset, subject, taken, rng)
            rows.append((subject, clip, emotion))
    return rows


def _full_rows(dataset: str, official, rng: np.random.Generator):
    """(subject, clip, emotion) of the full set: the official list plus the real set's extra clips."""
    listed = [(s, c, label) for d, s, c, label in official if d == dataset]
    if dataset == "smic":
        rows = [(s, c, SMIC_CLASS_FOLDERS.get(c.split("_")[1], "?")) for s, c, _ in listed]
        wrong = [c for (s, c, emotion), (_, _, label) in zip(rows, listed) if emotion != SMIC_LABELS[label]]
        if wrong:
            raise DatasetError(f"{OFFICIAL_LIST}: SMIC clips whose name disagrees with their label: {wrong}")
        return rows
    negative_counts = CASME2_NEGATIVE if dataset == "casme2" else SAMM_NEGATIVE
    n_negative = sum(label == 0 for _, _, label in listed)
    if n_negative != sum(negative_counts.values()):
        raise DatasetError(f"{OFFICIAL_LIST}: {n_negative} {dataset} negatives, expected "
                           f"{sum(negative_counts.values())} ({negative_counts})")
    negatives = iter(_spread(negative_counts, rng))
    rows = [(s, c, next(negatives) if label == 0 else COMPOSITE_EMOTION[dataset][label]) for s, c, label in listed]
    taken = {s: {c for s2, c, _ in listed if s2 == s} for s, _, _ in listed}
    if dataset == "casme2":
        subjects, extra = CASME2_SUBJECTS_FULL, _spread(CASME2_EXTRA, rng)
    else:
        subjects, extra = SAMM_SUBJECTS_FULL, ["Other"] * SAMM_OTHER
    unlisted = [s for s in subjects if s not in taken]  # subjects with only non-composite clips
    owners = [unlisted[i % len(unlisted)] for i in range(2 * len(unlisted))]
    owners += [subjects[i] for i in rng.integers(0, len(subjects), len(extra) - len(owners))]
    for subject, emotion in zip(owners, extra):
        rows.append((subject, _new_name(dataset, subject, taken.setdefault(subject, set()), rng), emotion))
    return rows


def _timing(dataset: str, key: str, full: bool, seed: int, apex_written: bool) -> tuple[int, int, int]:
    rng = _rng(seed, "timing", key)
    shortest, longest = (FULL_LENGTHS if full else SMALL_LENGTHS)[FPS[dataset]]
    n_frames = int(rng.integers(shortest, longest + 1))
    onset = int(rng.integers(*ONSET_RANGES[dataset]))
    offset = onset + n_frames - 1
    apex = onset + (offset - onset) // 2 if not apex_written else int(rng.integers(onset + 1, offset))
    return onset, apex, offset


def plan_synthetic(*, full: bool = False, seed: int = 0, datasets: Iterable[str] = DATASETS,
                   subjects: int | None = None, clips_per_subject: int | None = None) -> list[ClipSpec]:
    """The clip table ``make_synthetic`` would write, without writing anything.

    full=False: the small set (CASME II 6 subjects, 37 clips; SAMM 4 subjects, 16 clips;
    SMIC 4 subjects, 15 clips; 8..24 frames at 200 fps, 4..12 at 100 fps). full=True: every
    sample of the official MEGC2019 list (mer_utils/resources/megc2019_composite.csv) with an
    emotion matching its label, plus the real sets' other clips: CASME II 255 clips over 26
    subjects, SAMM 159 over 32, SMIC 164 over 16; 8..66 frames at 200 fps, 4..33 at 100 fps.
    ``subjects`` keeps only the first N subjects of each dataset and ``clips_per_subject`` the
    first N clips of each subject (in clip order); the clips kept are unchanged.
    """
    datasets = _check_datasets(datasets)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    if subjects is not None and (not isinstance(subjects, int) or subjects < 1):
        raise ConfigError(f"subjects must be a positive whole number or None, got {subjects!r}")
    if clips_per_subject is not None and (not isinstance(clips_per_subject, int) or clips_per_subject < 1):
        raise ConfigError(f"clips_per_subject must be a positive whole number or None, got {clips_per_subject!r}")
    official = _official_rows(datasets) if full else []
    plan: list[ClipSpec] = []
    for dataset in datasets:
        rng = _rng(seed, "plan", dataset, full)
        if full:
            rows = _full_rows(dataset, official, rng)
        else:
            table = {"casme2": SMALL_CASME2, "samm": SMALL_SAMM, "smic": SMALL_SMIC}[dataset]
            rows = _named_rows(dataset, table, rng)
        rows.sort(key=lambda row: (row[0], row[1]))
        unwritten = set()
        if dataset == "casme2":
            unwritten = {rows[i][:2] for i in rng.choice(len(rows), APEX_UNWRITTEN_ROWS, replace=False)}
        kept = sorted({row[0] for row in rows}, key=lambda name: int(re.sub(r"\D", "", name)))[:subjects]
        per_subject: Counter = Counter()
        for subject, clip, emotion in rows:
            if subject not in kept:
                continue
            per_subject[subject] += 1
            if clips_per_subject is not None and per_subject[subject] > clips_per_subject:
                continue
            key = f"{dataset}/{subject}/{clip}"
            choices = EMOTION_MOVEMENTS[emotion.lower()]
            pick = _rng(seed, "movement", key)
            movement = choices[int(pick.integers(len(choices)))]
            side = ("left", "right")[int(pick.integers(2))] if movement in SIDED_MOVEMENTS else ""
            action_units = side[:1].upper() + MOVEMENT_AUS[movement]
            apex_written = (subject, clip) not in unwritten
            onset, apex, offset = _timing(dataset, key, full, seed, apex_written)
            plan.append(ClipSpec(dataset, subject, clip, emotion, movement, side,
                                 action_units, onset, apex, offset, apex_written))
    return plan


def _check_datasets(datasets: Iterable[str]) -> tuple[str, ...]:
    if isinstance(datasets, str):
        datasets = (datasets,)
    chosen = tuple(dict.fromkeys(datasets))
    unknown = [d for d in chosen if d not in DATASETS]
    if unknown or not chosen:
        raise ConfigError(f"datasets {list(datasets)!r}: expected a non-empty subset of {', '.join(DATASETS)}")
    return chosen


# ----------------------------------------------------------------------------- faces


@lru_cache(maxsize=1)
def source_face() -> tuple[np.ndarray, np.ndarray]:
    """The face photo (skimage astronaut, BGR uint8 512 x 512) and its 68 dlib landmarks (68, 2)."""
    from skimage import data

    from mer_utils.face import load_face_models

    rgb = data.astronaut()
    detector, predictor = load_face_models()
    faces = detector(rgb, 0)
    if len(faces) != 1:
        raise DatasetError(f"skimage astronaut photo: dlib found {len(faces)} faces, expected 1")
    shape = predictor(rgb, faces[0])
    landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return np.ascontiguousarray(rgb[:, :, ::-1]), landmarks


@dataclass(frozen=True)
class SubjectFace:
    """A subject's still frame (before motion and noise) and where its face is."""

    image: np.ndarray  # (480, 640, 3) BGR or (480, 640) grey, uint8
    landmarks: np.ndarray  # (68, 2) x, y in the frame
    head_mask: np.ndarray  # (480, 640) float32 in [0, 1]: where the head (and its drift) is
    face_width: float  # jaw width, landmarks 0..16, in pixels
    moving: tuple[slice, slice]  # rows, columns of the box outside which nothing ever moves


def subject_face(dataset: str, subject: str, seed: int, photo: np.ndarray, landmarks: np.ndarray) -> SubjectFace:
    """Compose one subject: pose, lighting and tint drawn from (seed, dataset, subject)."""
    import cv2

    rng = _rng(seed, "subject", dataset, subject)
    base_width = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    scale = rng.uniform(170, 230) / base_width
    angle = rng.uniform(-8, 8)
    centre = landmarks.mean(axis=0)
    target = np.array([FRAME_WIDTH / 2 + rng.uniform(-40, 40), FRAME_HEIGHT / 2 + rng.uniform(-25, 25)])
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
    matrix[:, 2] += target - centre
    face = cv2.warpAffine(photo, matrix, (FRAME_WIDTH, FRAME_HEIGHT), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    points = landmarks @ matrix[:, :2].T + matrix[:, 2]
    width = base_width * scale

    # Soft ellipse around head and forehead; the rest is a smooth textured background.
    mask = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.float32)
    up = matrix[:, :2] @ np.array([0.0, -1.0]) / scale  # the face's "up" in the frame
    head = points.mean(axis=0) + 0.15 * width * up
    cv2.ellipse(mask, (int(round(head[0])), int(round(head[1]))), (int(0.8 * width), int(0.98 * width)),
                -angle, 0, 360, 1.0, thickness=-1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.06 * width)
    texture = cv2.resize(rng.uniform(-1, 1, (6, 8, 3)).astype(np.float32), (FRAME_WIDTH, FRAME_HEIGHT),
                         interpolation=cv2.INTER_CUBIC)
    background = rng.uniform(50, 200, 3).astype(np.float32) + 30 * texture
    image = mask[..., None] * face + (1 - mask[..., None]) * background

    # Scene lighting: gain, gamma, a left-right gradient, per-channel tint.
    columns = np.linspace(-1, 1, FRAME_WIDTH, dtype=np.float32)
    light = rng.uniform(0.8, 1.15) * (1 + rng.uniform(-0.25, 0.25) * columns)[None, :, None]
    image = 255 * np.clip(image / 255, 0, 1) ** rng.uniform(0.8, 1.25) * light * rng.uniform(0.85, 1.15, 3)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if dataset == "samm":  # SAMM is recorded in grey
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    rows, columns = np.nonzero(mask > 1e-3)
    moving = slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1)
    return SubjectFace(image, points, mask, width, moving)


# ----------------------------------------------------------------------------- motion


def displacement_field(spec: ClipSpec, face: SubjectFace, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The clip's movement at apex: (dx, dy) per pixel, float32 (480, 640), in pixels per unit amplitude.

    A Gaussian bump (sigma 4..6 % of the face width) around each landmark of the
    movement, pointing along the movement's direction in face axes; landmark positions
    jitter by 2 % of the face width and directions by up to 15 degrees per clip. Scaled
    so that the largest displacement is the movement's strength times a per-clip gain in
    [0.7, 1.3].
    """
    strength, groups = MOVEMENTS[spec.movement]
    mirror = SIDED_MOVEMENTS.get(spec.movement, {}) if spec.side == "left" else {}
    eyes = face.landmarks[42:48].mean(axis=0) - face.landmarks[36:42].mean(axis=0)
    x_axis = eyes / np.linalg.norm(eyes)
    y_axis = np.array([-x_axis[1], x_axis[0]])
    sigma = face.face_width * rng.uniform(0.04, 0.06)
    xs = np.arange(FRAME_WIDTH, dtype=np.float32)
    ys = np.arange(FRAME_HEIGHT, dtype=np.float32)
    field_x = np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.float32)
    field_y = np.zeros_like(field_x)
    for indices, (dx, dy) in groups:
        if mirror:
            indices, dx = tuple(mirror.get(i, i) for i in indices), -dx
        turn = math.radians(rng.uniform(-15, 15))
        dx, dy = dx * math.cos(turn) - dy * math.sin(turn), dx * math.sin(turn) + dy * math.cos(turn)
        vector = dx * x_axis + dy * y_axis
        for index in indices:
            cx, cy = face.landmarks[index] + rng.normal(0, 0.02 * face.face_width, 2)
            bump = np.outer(np.exp(-((ys - cy) ** 2) / (2 * sigma**2)), np.exp(-((xs - cx) ** 2) / (2 * sigma**2)))
            field_x += float(vector[0]) * bump
            field_y += float(vector[1]) * bump
    peak = float(np.sqrt(field_x**2 + field_y**2).max())
    gain = strength * rng.uniform(0.7, 1.3) / peak
    return field_x * gain, field_y * gain


def envelope(frame: int, onset: int, apex: int, offset: int) -> float:
    """Movement intensity in [0, 1]: sin^2 rise from 0 at onset to 1 at apex, cos^2 fall to 0 at offset."""
    if frame <= apex:
        return math.sin(0.5 * math.pi * (frame - onset) / max(apex - onset, 1)) ** 2
    return math.cos(0.5 * math.pi * (frame - apex) / max(offset - apex, 1)) ** 2


# ----------------------------------------------------------------------------- rendering

NOISE_BANK_FRAMES = 4
_worker: dict = {}


def _init_worker(photo: np.ndarray, landmarks: np.ndarray, seed: int, noise: float) -> None:
    _worker.update(photo=photo, landmarks=landmarks, seed=seed, noise=noise, bank=None)
    if noise > 0:  # one bank of rounded Gaussian noise per process, identical in all of them
        size = NOISE_BANK_FRAMES * FRAME_HEIGHT * FRAME_WIDTH * 3
        normal = _rng(seed, "noise").standard_normal(size, dtype=np.float32)
        _worker["bank"] = np.clip(np.rint(normal * noise), -255, 255).astype(np.int16)


def _init_pool_worker(*initargs) -> None:
    import cv2

    from mer_utils.files import exit_with_parent

    exit_with_parent()  # a killed `mer synth` leaves no pool worker behind
    cv2.setNumThreads(1)  # one clip per process already uses the cores
    _init_worker(*initargs)


@lru_cache(maxsize=8)
def _cached_subject(dataset: str, subject: str) -> SubjectFace:
    return subject_face(dataset, subject, _worker["seed"], _worker["photo"], _worker["landmarks"])


def _render_clip(spec: ClipSpec, folder: Path, amplitude: float) -> int:
    """Write the clip's frames onset..offset into ``folder``; returns the number written."""
    import cv2

    face = _cached_subject(spec.dataset, spec.subject)
    rng = _rng(_worker["seed"], "clip", spec.key)
    field_x, field_y = displacement_field(spec, face, rng)
    field_x *= amplitude
    field_y *= amplitude
    heading = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(0.1, 0.7) * np.array([math.cos(heading), math.sin(heading)])
    # Only the head box moves (the mask and the bumps are ~0 outside it): remap just that box.
    box = face.moving
    grid_y, grid_x = np.mgrid[box[0], box[1]].astype(np.float32)
    field_x, field_y, head = field_x[box], field_y[box], face.head_mask[box]
    folder.mkdir(parents=True, exist_ok=True)
    bank = _worker["bank"]
    for number in range(spec.onset, spec.offset + 1):
        strength = envelope(number, spec.onset, spec.apex, spec.offset)
        progress = (number - spec.onset) / max(spec.n_frames - 1, 1)
        shift = drift * (3 * progress**2 - 2 * progress**3)  # smooth slow head drift
        # remap samples the still image at p - displacement: content moves by +displacement.
        map_x = grid_x - strength * field_x - float(shift[0]) * head
        map_y = grid_y - strength * field_y - float(shift[1]) * head
        frame = face.image.copy()
        frame[box] = cv2.remap(face.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if bank is not None:
            start = int(rng.integers(0, bank.size - frame.size))
            frame = cv2.add(frame, bank[start:start + frame.size].reshape(frame.shape), dtype=cv2.CV_8U)
        path = folder / spec.frame_name(number)
        if not cv2.imwrite(str(path), frame):
            raise DatasetError(f"{spec.key}: could not write frame {path}")
    return spec.n_frames


def _render_task(spec: ClipSpec, folder: str, amplitude: float) -> tuple[str, int]:
    return spec.key, _render_clip(spec, Path(folder), amplitude)


# ----------------------------------------------------------------------------- annotations


def write_casme2_sheet(path: Path, clips: list[ClipSpec]) -> None:
    """``CASME2-coding-20140508.xlsx``: header row 1 with the two blank header cells; apex ``/`` where unwritten."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(list(CASME2_HEADER))
    for spec in clips:
        units = int(spec.action_units) if spec.action_units.isdigit() else spec.action_units
        apex = spec.apex if spec.apex_written else "/"
        sheet.append([int(spec.subject[3:]), spec.clip, None, spec.onset, apex, spec.offset, None,
                      units, spec.emotion])
    workbook.save(path)


def write_samm_sheet(path: Path, clips: list[ClipSpec]) -> None:
    """``SAMM_Micro_FACS_Codes_v2.xlsx``: 13 preamble rows, the header in row 14, then one row per clip."""
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "FACS_Movement_Only"
    preamble = ["SAMM Micro-Movement FACS Codes (synthetic, written by mer_utils.synth)", None,
                "Frames are 640 x 480 grey JPEG at 200 fps; subject folders are zero-padded (006).",
                "Onset, Apex and Offset are frame numbers as in the file names (006_05562.jpg).",
                "Duration = Offset - Onset + 1 frames.", None,
                "Objective Classes: 1 happiness, 2 surprise, 3 anger, 4 disgust, 5 sadness, 6 fear, 7 other.",
                None, "The faces are one photo (skimage astronaut) under varied pose and lighting;",
                "the movements are synthetic displacement fields.", None, None, None]
    assert len(preamble) == SAMM_PREAMBLE_ROWS
    for text in preamble:
        sheet.append([text] if text else [])
    sheet.append(list(SAMM_HEADER))
    for spec in clips:
        inducement = int(spec.clip.split("_")[1])
        sheet.append([int(spec.subject), spec.clip, inducement, spec.onset, spec.apex, spec.offset,
                      spec.n_frames, "Micro", spec.action_units, None, spec.emotion,
                      SAMM_OBJECTIVE_CLASS[spec.emotion.lower()]])
    workbook.save(path)


# ----------------------------------------------------------------------------- make_synthetic


def _marker_params(full, amplitude, noise, seed, subjects, clips_per_subject=None) -> dict:
    params = {"version": GENERATOR_VERSION, "full": bool(full), "amplitude": float(amplitude),
              "noise": float(noise), "seed": int(seed), "subjects": subjects}
    if clips_per_subject is not None:  # absent by default, so existing default sets keep their marker
        params["clips_per_subject"] = clips_per_subject
    return params


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _existing_state(folder: Path, params: dict, overwrite: bool) -> str:
    """"new" (absent or empty), "done" (same parameters, complete) or "replace"; else ConfigError."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return "new"
    marker = _read_marker(folder) if folder.is_dir() else None
    if marker is None:
        raise ConfigError(f"{folder} exists and is not empty, and it was not written by make_synthetic "
                          f"(no {MARKER_NAME}); refusing to overwrite it: choose another output folder")
    if marker.get("params") == params:
        return "done"
    if not overwrite:
        raise ConfigError(f"{folder} holds synthetic data made with other parameters ({marker.get('params')}, "
                          f"now {params}); pass overwrite=True (CLI: --overwrite) to replace it")
    return "replace"


class SynthCounts(dict):
    """The clips per dataset (dataset -> count) of :func:`make_synthetic`; ``reused`` names the
    datasets that were already there with the same parameters and were left as they were."""

    def __init__(self, counts: dict[str, int], reused: Iterable[str] = ()) -> None:
        super().__init__(counts)
        self.reused = tuple(reused)


def make_synthetic(out: str | Path, *, full: bool = False, amplitude: float = 3.0, noise: float = 2.0,
                   seed: int = 0, datasets: Iterable[str] = DATASETS, workers: int | None = None,
                   progress: bool = True, overwrite: bool = False, subjects: int | None = None,
                   clips_per_subject: int | None = None) -> SynthCounts:
    """Write the synthetic datasets under ``out`` and return the clips per dataset (a
    :class:`SynthCounts`, which also names the datasets reused as they were).

    ``out/CASME2``, ``out/SAMM``, ``out/SMIC`` in their native layouts (module docstring),
    clips from :func:`plan_synthetic` (``full``, ``seed``, ``subjects``, ``clips_per_subject``). ``amplitude``: peak
    facial displacement in pixels (times a per-clip gain in 0.7..1.3); ``noise``: sensor noise
    std in grey levels; ``workers``: processes (default os.cpu_count(); 1 renders in this
    process). A dataset folder that exists and is not empty is never touched unless it holds
    our marker: with the same parameters it is reused as is, with other parameters it is
    replaced only when ``overwrite=True``. Each folder is written as ``.<name>.partial`` and
    renamed when complete, so an interrupted run leaves no folder that looks finished.
    """
    datasets = _check_datasets(datasets)
    for name, value in (("amplitude", amplitude), ("noise", noise)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive whole number, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a folder")
    params = _marker_params(full, amplitude, noise, seed, subjects, clips_per_subject)
    plan = plan_synthetic(full=full, seed=seed, datasets=datasets, subjects=subjects,
                          clips_per_subject=clips_per_subject)
    states = {d: _existing_state(out / DATASET_FOLDERS[d], params, overwrite) for d in datasets}
    todo = [d for d in datasets if states[d] != "done"]
    counts = SynthCounts({d: sum(spec.dataset == d for spec in plan) for d in datasets},
                         reused=[d for d in datasets if d not in todo])
    if not todo:
        return counts

    partial = {d: out / f".{DATASET_FOLDERS[d]}.partial" for d in todo}
    for folder in partial.values():
        if folder.exists():  # left by an interrupted run
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    clips = [spec for spec in plan if spec.dataset in todo]
    started = time.perf_counter()
    _render_all(clips, partial, amplitude, noise, seed, workers, progress)

    for dataset in todo:
        folder, chosen = partial[dataset], [spec for spec in clips if spec.dataset == dataset]
        if dataset == "casme2":
            write_casme2_sheet(folder / CASME2_ANNOTATION, chosen)
        elif dataset == "samm":
            write_samm_sheet(folder / SAMM_ANNOTATION, chosen)
        marker = {"generator": "mer_utils.synth.make_synthetic", "params": params, "dataset": dataset,
                  "clips": len(chosen), "frames": sum(spec.n_frames for spec in chosen),
                  "seconds": round(time.perf_counter() - started, 1)}
        (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        final = out / DATASET_FOLDERS[dataset]
        if states[dataset] == "replace":
            retired = out / f".{DATASET_FOLDERS[dataset]}.replaced"
            if retired.exists():
                shutil.rmtree(retired)
            final.rename(retired)
            folder.rename(final)
            shutil.rmtree(retired)
        else:
            if final.exists():
                final.rmdir()  # empty, checked above
            folder.rename(final)
    return counts


def _render_all(clips: list[ClipSpec], partial: dict[str, Path], amplitude: float, noise: float,
                seed: int, workers: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    photo, landmarks = source_face()
    initargs = (photo, landmarks, seed, float(noise))
    total = sum(spec.n_frames for spec in clips)
    with tqdm(total=total, unit="frame", desc="synthetic frames", disable=not progress) as bar:
        if workers == 1 or len(clips) == 1:
            _init_worker(*initargs)
            _cached_subject.cache_clear()
            for spec in clips:
                bar.update(_render_clip(spec, partial[spec.dataset] / spec.folder, amplitude))
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # safe with threads (torch, dask) in the parent
        with ProcessPoolExecutor(min(workers, len(clips)), mp_context=context,
                                 initializer=_init_pool_worker, initargs=initargs) as pool:
            futures = [pool.submit(_render_task, spec, str(partial[spec.dataset] / spec.folder), amplitude)
                       for spec in clips]
            try:
                for future in as_completed(futures):
                    bar.update(future.result()[1])
            except BaseException:  # a failed clip or Ctrl-C: drop the clips not started yet
                pool.shutdown(wait=False, cancel_futures=True)
                raise


__all__ = ["ClipSpec", "DATASETS", "MARKER_NAME", "make_synthetic", "plan_synthetic", "source_face",
           "subject_face", "displacement_field", "envelope"]
