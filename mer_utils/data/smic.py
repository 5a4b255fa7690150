"""SMIC-HS in its native layout.

Frames: ``SMIC/HS/s1/micro/{negative,positive,surprise}/s1_ne_01/image000123.bmp``
(frame 123), or under ``SMIC/SMIC_all_raw/HS`` or ``SMIC/SMIC_all_cropped/HS`` as the
release unpacks (raw preferred when both are there). There is no spreadsheet: the class folder is the emotion.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from mer_utils.data._common import holds_frames, list_frames, make_sample, raise_collected
from mer_utils.data.sample import Sample
from mer_utils.errors import DatasetError, DataWarning

CLASS_FOLDERS = ("negative", "positive", "surprise")
_SUBJECT_FOLDER = re.compile(r"^s\d+$", re.IGNORECASE)


RELEASE_FOLDERS = ("SMIC_all_raw", "SMIC_all_cropped")  # how the release unpacks: SMIC/SMIC_all_raw/HS


def hs_folder(path: Path) -> Path:
    """The ``HS`` folder: ``path/HS`` when it exists, else ``path`` itself if it holds
    ``s<N>/micro``, else ``path/SMIC_all_raw/HS`` or (without it) ``path/SMIC_all_cropped/HS``,
    as the release unpacks."""
    if (path / "HS").is_dir():
        return path / "HS"
    if path.is_dir() and any((child / "micro").is_dir() for child in _subject_folders(path, warn=False)):
        return path
    for release in RELEASE_FOLDERS:
        if (path / release / "HS").is_dir():
            return path / release / "HS"
    raise DatasetError(
        f"{path}: expected a SMIC folder holding HS/ (HS/s1/micro/negative/s1_ne_01/image000123.bmp), "
        f"{RELEASE_FOLDERS[0]}/HS/ or {RELEASE_FOLDERS[1]}/HS/, or the HS folder itself"
    )


def read_smic(path: str | Path, left_out: dict[str, str] | None = None) -> list[Sample]:
    """All SMIC-HS micro-expression clips under ``path`` (``SMIC/`` or ``SMIC/HS``), sorted by (subject, clip).

    The emotion is the class folder (negative, positive, surprise). SMIC has no apex or
    onset/offset annotation, so, as the paper does: onset is the clip's first frame number,
    offset its last, and the apex the middle frame ``onset + (offset - onset) // 2`` with
    ``apex_inferred=True``. Subject folders without a ``micro`` folder (any case) are skipped;
    folders not named ``s<N>`` are left out with a warning. A clip folder without frames (the
    real SMIC_all_cropped has one) is left out with a DataWarning naming it, and recorded in
    ``left_out`` (clip key -> why) when given, so that a sample list naming it can say why.
    Raises DatasetError naming the folder at fault (unknown class folder, a 0-byte frame, a
    frame number given twice).
    """
    hs = hs_folder(Path(path))
    samples: list[Sample] = []
    problems: list[str] = []
    empty: list[Path] = []
    for subject_dir in _subject_folders(hs):
        micro = next((p for p in sorted(subject_dir.iterdir()) if p.is_dir() and p.name.lower() == "micro"), None)
        if micro is None:
            continue
        for class_dir in sorted(p for p in micro.iterdir() if p.is_dir() and not p.name.startswith(".")):
            emotion = class_dir.name.lower()
            if emotion not in CLASS_FOLDERS:
                problems.append(f"{class_dir}: class folder is not one of {', '.join(CLASS_FOLDERS)}")
                continue
            for clip_dir in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if not holds_frames(clip_dir):
                    empty.append(clip_dir)
                    if left_out is not None:
                        left_out[f"smic/{subject_dir.name}/{clip_dir.name}"] = f"its folder {clip_dir} holds no frame images"
                    continue
                try:
                    samples.append(_clip_sample(subject_dir.name, emotion, clip_dir))
                except DatasetError as error:
                    problems.append(str(error))
    raise_collected(problems, hs)
    if empty:
        warnings.warn(f"{len(empty)} SMIC-HS clip folder(s) without frame images left out: "
                      + ", ".join(str(p) for p in empty), DataWarning, stacklevel=2)
    if not samples:
        raise DatasetError(f"{hs}: no clips found (expected s1/micro/negative/s1_ne_01/image000123.bmp; SMIC-E's "
                           "long recordings, HS_long, are not read: the protocols use SMIC-HS's micro clips)")
    return sorted(samples, key=lambda s: (s.subject, s.clip))


def _subject_folders(folder: Path, warn: bool = True) -> list[Path]:
    """The subject folders s1, s2, ... of ``folder``; other folders are left out with a
    warning naming them (a renamed subject would otherwise vanish from the protocol)."""
    with os.scandir(folder) as entries:
        folders = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    other = sorted(e.name for e in folders if not _SUBJECT_FOLDER.match(e.name))
    if other and warn:
        warnings.warn(f"{folder}: folder(s) {', '.join(other)} left out: SMIC-HS subject folders are named s1, s2, ...",
                      UserWarning, stacklevel=3)
    return sorted(Path(e.path) for e in folders if _SUBJECT_FOLDER.match(e.name))


def _clip_sample(subject: str, emotion: str, clip_dir: Path) -> Sample:
    listing = list_frames(clip_dir)  # its errors name the folder or file
    numbers = listing[1]
    return make_sample(
        dataset="smic",
        subject=subject,
        clip=clip_dir.name,
        emotion=emotion,
        onset=numbers[0],
        apex=None,
        offset=numbers[-1],
        folder=clip_dir,
        where=str(clip_dir),
        listing=listing,
    )
