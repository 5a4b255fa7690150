"""SAMM in its native layout.

Frames: ``SAMM/006/006_1_2/006_05562.jpg`` (frame 5562, the number after the last
underscore), or ``SAMM/SAMM/006/...`` as some copies unpack. Annotation:
``SAMM/SAMM_Micro_FACS_Codes_v2.xlsx`` (or the dated release's
``SAMM_20181215_Micro_FACS_Codes_v2.xlsx``), first sheet, preamble rows
(13 in v2), then the header: Subject, Filename, Inducement Code, Onset Frame, Apex Frame,
Offset Frame, Duration, Micro, Action Units, Notes, Estimated Emotion, Objective Classes.
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

ANNOTATION_NAME = "SAMM_Micro_FACS_Codes_v2.xlsx"
ANNOTATION_PATTERN = "SAMM*Micro_FACS_Codes*.xlsx"  # also the dated release, SAMM_20181215_Micro_FACS_Codes_v2.xlsx
_SUBJECT_FOLDER = re.compile(r"^\d{3}$")
REQUIRED_COLUMNS = ("Subject", "Filename", "Onset Frame", "Apex Frame", "Offset Frame", "Estimated Emotion")
_SUBJECT = re.compile(r"^0*(\d+)$")


def samm_subject(value) -> str:
    """Sheet subject (6, "6", "006", 6.0) -> folder name ``006``; ValueError otherwise."""
    match = _SUBJECT.match(cell_text(value))
    if match is None:
        raise ValueError(f"subject {cell_text(value)!r} is not a number like 6 or 006")
    return f"{int(match.group(1)):03d}"


def read_samm(path: str | Path) -> list[Sample]:
    """All annotated SAMM clips under the ``SAMM/`` folder ``path``, sorted by (subject, clip).

    The header row is found by its Subject and Filename cells, not by a fixed preamble
    length. Emotions are kept as annotated (stripped; compare them case-insensitively). An
    apex of -1, ``/`` or blank becomes the middle frame with ``apex_inferred=True``.
    Raises DatasetError naming the sheet and Excel row, or the folder, at fault.
    """
    samm_dir = Path(path)
    if not samm_dir.is_dir():
        raise DatasetError(f"SAMM folder {samm_dir} does not exist")
    annotation = find_annotation(samm_dir)
    clips_dir = subjects_folder(samm_dir)
    return read_sheet_samples(annotation, REQUIRED_COLUMNS, lambda row, where: _row_sample(row, where, clips_dir),
                              "SAMM")


def find_annotation(samm_dir: Path) -> Path:
    """``SAMM_Micro_FACS_Codes_v2.xlsx``, or else the one file matching ANNOTATION_PATTERN (the
    dated release's name), in ``samm_dir`` or in a ``SAMM`` folder inside it."""
    for folder in (samm_dir, samm_dir / "SAMM"):
        if (folder / ANNOTATION_NAME).is_file():
            return folder / ANNOTATION_NAME
        found = sorted(p for p in folder.glob(ANNOTATION_PATTERN) if not p.name.startswith("~$")) if folder.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise DatasetError(f"{folder}: expected one annotation file {ANNOTATION_PATTERN}, found "
                               f"{', '.join(p.name for p in found)}: keep the one that describes these frames")
    raise DatasetError(f"{samm_dir}: annotation file {ANNOTATION_NAME} is missing")


def subjects_folder(samm_dir: Path) -> Path:
    """The folder holding the subject folders 006, 007, ...: ``samm_dir``, or ``samm_dir/SAMM``
    when the archive unpacked into a second SAMM folder."""
    nested = samm_dir / "SAMM"
    if nested.is_dir() and not has_subfolder(samm_dir, _SUBJECT_FOLDER) and has_subfolder(nested, _SUBJECT_FOLDER):
        return nested
    return samm_dir


def _row_sample(row: SheetRow, where: str, samm_dir: Path) -> Sample:
    return sheet_row_sample(
        row, where, dataset="samm", subject_of=samm_subject, clips_dir=samm_dir,
        frame_columns=("Onset Frame", "Apex Frame", "Offset Frame"), lowercase_emotion=False,
        extra={"action_units": cell_text(row.cells.get("actionunits")),
               "objective_class": cell_text(row.cells.get("objectiveclasses"))},
    )
