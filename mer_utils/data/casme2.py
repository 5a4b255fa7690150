"""CASME II in its native layout.

Frames: ``CASME2/CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`` (frame 46) or the cropped
faces ``CASME2/Cropped/sub01/EP02_01f/reg_img46.jpg``. Annotation: the one
``CASME2/CASME2-coding-*.xlsx``, first sheet, header in row 1: Subject, Filename, (blank),
OnsetFrame, ApexFrame, OffsetFrame, (blank), Action Units, Estimated Emotion.
"""
from __future__ import annotations

import re
from pathlib import Path

from mer_utils.data._common import (
    SheetRow,
    cell_text,
    has_subfolder,
    read_sheet_samples,
    sheet_row_sample,
)
from mer_utils.data.sample import Sample
from mer_utils.errors import DatasetError

VARIANT_FOLDERS = {"raw": "CASME2_RAW_selected", "cropped": "Cropped"}
# Where each variant's subject folders may sit, first match wins: the folder itself, the same
# name twice (as some archives unpack), and the 2019 release's Cropped-updated/Cropped.
VARIANT_PLACES = {
    "raw": ("CASME2_RAW_selected", "CASME2_RAW_selected/CASME2_RAW_selected"),
    "cropped": ("Cropped", "Cropped/Cropped", "Cropped-updated/Cropped", "Cropped-updated"),
}
_SUBJECT_FOLDER = re.compile(r"^sub\d+$", re.IGNORECASE)
ANNOTATION_PATTERN = "CASME2-coding-*.xlsx"
REQUIRED_COLUMNS = ("Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Estimated Emotion")
_SUBJECT = re.compile(r"^(?:sub)?0*(\d+)$", re.IGNORECASE)


def casme2_subject(value) -> str:
    """Sheet subject (1, "1 ", "01", "sub1") -> folder name ``sub01``; ValueError otherwise."""
    match = _SUBJECT.match(cell_text(value))
    if match is None:
        raise ValueError(f"subject {cell_text(value)!r} is not a number like 1 or sub01")
    return f"sub{int(match.group(1)):02d}"


def find_annotation(casme2_dir: Path) -> Path:
    """The single ``CASME2-coding-*.xlsx`` in ``casme2_dir`` (DatasetError if none or several)."""
    found = sorted(casme2_dir.glob(ANNOTATION_PATTERN))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found) + ": keep the one that describes these frames"
        raise DatasetError(
            f"{casme2_dir}: expected exactly one annotation file {ANNOTATION_PATTERN}, found {what}"
        )
    return found[0]


def frames_folder(casme2_dir: Path, variant: str = "auto") -> tuple[Path, str]:
    """The folder holding the subject folders sub01, sub02, ... and its variant name; "auto"
    prefers CASME2_RAW_selected over Cropped. Each variant's folder may also sit one level
    down (VARIANT_PLACES: ``CASME2_RAW_selected/CASME2_RAW_selected``, the 2019 release's
    ``Cropped-updated/Cropped``)."""
    if variant not in ("auto", *VARIANT_FOLDERS):
        raise DatasetError(f"CASME II variant {variant!r} is not one of auto, raw, cropped")
    candidates = ["raw", "cropped"] if variant == "auto" else [variant]
    for name in candidates:
        for place in VARIANT_PLACES[name]:
            folder = casme2_dir / place
            if folder.is_dir() and has_subfolder(folder, _SUBJECT_FOLDER):
                return folder, name
    for name in candidates:  # present but without subject folders: its rows name the missing clips
        if (casme2_dir / VARIANT_FOLDERS[name]).is_dir():
            return casme2_dir / VARIANT_FOLDERS[name], name
    expected = " or ".join(VARIANT_FOLDERS[name] for name in candidates)
    raise DatasetError(f"{casme2_dir}: no frames folder {expected} (variant={variant!r})")


def read_casme2(path: str | Path, variant: str = "auto") -> list[Sample]:
    """All annotated CASME II clips under the ``CASME2/`` folder ``path``, sorted by (subject, clip).

    ``variant``: "raw" (CASME2_RAW_selected), "cropped" (Cropped, faces already cut out) or
    "auto" (raw when present). Emotions are lower-cased; an apex written ``/`` or left
    blank becomes the middle frame with ``apex_inferred=True``. Labels are left None.
    Raises DatasetError naming the sheet and Excel row, or the folder, at fault.
    """
    casme2_dir = Path(path)
    if not casme2_dir.is_dir():
        raise DatasetError(f"CASME II folder {casme2_dir} does not exist")
    annotation = find_annotation(casme2_dir)
    base, variant_used = frames_folder(casme2_dir, variant)
    return read_sheet_samples(annotation, REQUIRED_COLUMNS,
                              lambda row, where: _row_sample(row, where, base, variant_used), "CASME II")


def _row_sample(row: SheetRow, where: str, base: Path, variant: str) -> Sample:
    return sheet_row_sample(
        row, where, dataset="casme2", subject_of=casme2_subject, clips_dir=base,
        frame_columns=("OnsetFrame", "ApexFrame", "OffsetFrame"), lowercase_emotion=True,
        extra={"variant": variant, "action_units": cell_text(row.cells.get("actionunits"))},
    )
