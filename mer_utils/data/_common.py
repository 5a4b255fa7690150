"""Helpers shared by the three dataset readers: frame listing, spreadsheet rows, cell parsing.

Reading stays fast: folders are listed (one ``scandir`` per clip), images are never opened.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from mer_utils.data.sample import Sample
from mer_utils.errors import DatasetError, DataWarning

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
HEADER_SEARCH_ROWS = 30
MAX_LISTED_PROBLEMS = 10
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_MISSING_APEX = {"", "/", "-", "-1", "none", "nan", "n/a", "na"}


def list_frames(folder: Path) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    """Frame files of one clip folder, sorted by frame number (``img9`` before ``img10``).

    The frame number is the integer at the end of the file stem (``img46``, ``reg_img46``,
    ``006_05562``, ``image000123``). Hidden files and non-image files are ignored.
    Raises DatasetError naming the folder (missing, empty) or the file (0 bytes, no
    number, a frame number given twice).
    """
    if not folder.is_dir():
        raise DatasetError(f"clip folder {folder} does not exist")
    numbered: dict[int, Path] = {}
    with os.scandir(folder) as entries:
        for entry in filter(_is_image_file, entries):
            stem = os.path.splitext(entry.name)[0]
            match = _TRAILING_NUMBER.search(stem)
            path = Path(entry.path)
            if match is None:
                raise DatasetError(f"frame file {path} has no frame number at the end of its name")
            if entry.stat().st_size == 0:
                raise DatasetError(f"frame file {path} is empty (0 bytes)")
            number = int(match.group(1))
            if number in numbered:
                raise DatasetError(
                    f"frame number {number} appears twice in {folder}: "
                    f"{numbered[number].name} and {path.name}"
                )
            numbered[number] = path
    if not numbered:
        raise DatasetError(
            f"clip folder {folder} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    numbers = tuple(sorted(numbered))
    return tuple(numbered[n] for n in numbers), numbers


def _is_image_file(entry: os.DirEntry) -> bool:
    """A frame file as list_frames counts them: not hidden, a file, an image extension."""
    return (not entry.name.startswith(".") and entry.is_file()
            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)


def holds_frames(folder: Path) -> bool:
    """Whether ``folder`` holds at least one frame file (:func:`_is_image_file`)."""
    with os.scandir(folder) as entries:
        return any(map(_is_image_file, entries))


def has_subfolder(folder: Path, pattern: re.Pattern) -> bool:
    """Whether ``folder`` holds a folder whose name matches ``pattern`` (a dataset's subject
    folders: ``sub01``, ``006``), so the readers can tell which nesting holds the clips."""
    return any(pattern.match(p.name) and p.is_dir() for p in folder.iterdir())


def listed(items: list[str], separator: str = "; ") -> str:
    """Up to MAX_LISTED_PROBLEMS ``items`` joined, then "; and N more" for the rest."""
    more = len(items) - MAX_LISTED_PROBLEMS
    return separator.join(items[:MAX_LISTED_PROBLEMS]) + (f"{separator}and {more} more" if more > 0 else "")


def middle_frame(onset: int, offset: int) -> int:
    """The apex used when none is annotated: ``onset + (offset - onset) // 2`` (docs/method.md 1.1)."""
    return onset + (offset - onset) // 2


def make_sample(
    *,
    dataset: str,
    subject: str,
    clip: str,
    emotion: str,
    onset: int,
    apex: int | None,
    offset: int,
    folder: Path,
    where: str,
    extra: dict | None = None,
    listing: tuple[tuple[Path, ...], tuple[int, ...]] | None = None,
    mend: bool = False,
) -> Sample:
    """Build a Sample after checking the annotation against the frames on disk.

    ``apex=None`` means not annotated: the middle frame is used (in a folder whose frame
    numbers skip it, the nearest frame on disk, the earlier on a tie) and ``apex_inferred`` set.
    ``where`` names the annotation source (``file row 5`` or a folder) in every error.
    ``listing`` is ``list_frames(folder)`` when the caller already has it.

    ``mend`` (annotation sheets): the disagreements between a row and its frames that the
    real sheets hold (docs/method.md, "Where the real annotations disagree with their
    frames") are mended instead of refused, and the mend is described in
    ``extra["mended"]`` for the caller to warn about and count (:func:`read_sheet_samples`):
    an onset or offset frame without a file moves to the nearest frame on disk inside the
    annotated window; an offset before the onset becomes the clip folder's last frame; an
    apex outside the window or without a file becomes the middle frame (``apex_inferred``,
    the annotation kept in ``extra["annotated_apex"]``).
    """
    key = f"{dataset}/{subject}/{clip}"
    if onset == offset:  # eq. 5 and 6 would sum no movement: an all-zero image
        raise DatasetError(f"{where}: onset and offset are both frame {onset} ({key}); "
                           "a clip needs at least two frames")
    if onset > offset and not mend:
        raise DatasetError(f"{where}: onset {onset} is after offset {offset} ({key})")
    apex_inferred = apex is None
    if apex is not None and not onset <= apex <= offset and not mend:
        raise DatasetError(f"{where}: apex {apex} is outside [onset {onset}, offset {offset}] ({key})")
    if listing is None:
        try:
            listing = list_frames(folder)
        except DatasetError as error:
            raise DatasetError(f"{where}: {error}") from None
    frames, numbers = listing
    on_disk = set(numbers)
    extra = dict(extra or {})
    if mend:
        annotated_apex = apex
        onset, apex, offset, mended = _mend_window(onset, apex, offset, numbers)
        if mended:
            extra["mended"] = "; ".join(mended)
            if apex is None and annotated_apex is not None:
                extra["annotated_apex"] = annotated_apex
            apex_inferred = apex is None
        if onset > offset:
            raise DatasetError(f"{where}: onset {onset} is after offset {offset} ({key}), and the clip folder "
                               f"holds no frame after the onset (frames on disk: {numbers[0]}..{numbers[-1]})")
    if apex is None:
        apex = _middle_on_disk(onset, offset, numbers)
    for name, number in (("onset", onset), ("apex", apex), ("offset", offset)):
        if number not in on_disk:
            raise DatasetError(
                f"{where}: {name} frame {number} has no file in {folder} "
                f"(frames on disk: {numbers[0]}..{numbers[-1]}, {len(numbers)} files)"
            )
    return Sample(
        dataset=dataset,
        subject=subject,
        clip=clip,
        emotion=emotion,
        onset=onset,
        apex=apex,
        offset=offset,
        apex_inferred=apex_inferred,
        frames=frames,
        frame_numbers=numbers,
        extra=extra,
    )


def _middle_on_disk(onset: int, offset: int, numbers: tuple[int, ...]) -> int:
    """The middle frame, or the frame on disk nearest to it (the earlier on a tie)."""
    middle = middle_frame(onset, offset)
    return min((n for n in numbers if onset <= n <= offset), key=lambda n: (abs(n - middle), n), default=middle)


def _mend_window(onset: int, apex: int | None, offset: int, numbers: tuple[int, ...]):
    """(onset, apex, offset, mends): the annotated window fitted to the frame numbers on disk
    (see :func:`make_sample`'s ``mend``); ``mends`` says what changed, empty when nothing did."""
    on_disk, mends = set(numbers), []
    if onset > offset and onset in on_disk and numbers[-1] > onset:
        mends.append(f"offset {offset} is before onset {onset}: the clip ends at its folder's last frame, {numbers[-1]}")
        offset = numbers[-1]
    if onset < offset and onset not in on_disk:
        later = [n for n in numbers if onset < n < offset]
        if later:
            mends.append(f"onset frame {onset} has no file: the clip starts at the next frame on disk, {later[0]}")
            onset = later[0]
    if onset < offset and offset not in on_disk:
        earlier = [n for n in numbers if onset < n < offset]
        if earlier:
            mends.append(f"offset frame {offset} has no file (frames on disk: {numbers[0]}..{numbers[-1]}): "
                         f"the clip ends at the last frame on disk before it, {earlier[-1]}")
            offset = earlier[-1]
    if apex is not None and onset < offset and (not onset <= apex <= offset or apex not in on_disk):
        why = "has no file" if onset <= apex <= offset else f"is outside [onset {onset}, offset {offset}]"
        mends.append(f"apex {apex} {why}: the middle frame {_middle_on_disk(onset, offset, numbers)} is used, "
                     "as for a clip without an annotated apex")
        apex = None
    return onset, apex, offset, mends


def raise_collected(problems: list[str], source: Path | str, heading: str = "") -> None:
    """Raise one DatasetError: one problem on one line, several listed one a line (up to
    MAX_LISTED_PROBLEMS) below their count, or below ``heading`` when given."""
    if not problems:
        return
    if len(problems) == 1 and not heading:
        raise DatasetError(f"reading {source}: {problems[0]}")
    shown = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise DatasetError(f"{heading or f'{len(problems)} problem(s)'} reading {source}:\n  - {shown}{tail}")


# ----------------------------------------------------------------------------- spreadsheets


def header_key(name: Any) -> str:
    """Header cell -> comparison key: case, spaces and underscores ignored (``Onset Frame`` = ``OnsetFrame``)."""
    return re.sub(r"[\s_]+", "", str(name or "")).lower()


@dataclass
class SheetRow:
    """One data row of an annotation sheet: the Excel row number and cells by header key."""

    number: int
    cells: dict[str, Any]


def read_annotation_sheet(path: Path, required: Iterable[str]) -> Iterator[SheetRow]:
    """Rows of the first sheet of ``path`` below its header row.

    The header is the first row (within HEADER_SEARCH_ROWS) whose cells include Subject
    and Filename, so preamble rows (SAMM has 13) are skipped. Blank rows are skipped.
    Raises DatasetError naming the file and the expected/found columns when the header
    or a ``required`` column is missing.
    """
    import openpyxl  # local: only the spreadsheet readers need it

    required = list(required)
    try:
        # Not read_only: small files, and row numbers then never depend on the file's
        # (sometimes wrong) stored dimensions.
        workbook = openpyxl.load_workbook(path, data_only=True)
    except Exception as error:  # openpyxl raises several unrelated types
        raise DatasetError(f"cannot read spreadsheet {path}: {error}") from None
    sheet = workbook.worksheets[0]
    rows = [tuple(row) for row in sheet.iter_rows(values_only=True)]
    formulas = None  # read on the first blank cell of a read column: most sheets never need it

    header_index = None
    first_nonblank = None
    for index, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        keys = {header_key(cell) for cell in row}
        if first_nonblank is None and keys - {""}:
            first_nonblank = index
        if {"subject", "filename"} <= keys:
            header_index = index
            break
    expected = ", ".join(required)
    if header_index is None:
        found = _describe_cells(rows[first_nonblank]) if first_nonblank is not None else "nothing"
        raise DatasetError(
            f"{path}: no header row (a row with the columns Subject and Filename) in the first "
            f"{HEADER_SEARCH_ROWS} rows of its first sheet, {sheet.title!r} (the one the kit reads); expected "
            f"columns {expected}; row {(first_nonblank or 0) + 1} holds {found}"
        )
    header = rows[header_index]
    columns: dict[str, int] = {}
    for position, cell in enumerate(header):
        key = header_key(cell)
        if key and key not in columns:
            columns[key] = position
    missing = [name for name in required if header_key(name) not in columns]
    if missing:
        raise DatasetError(
            f"{path} row {header_index + 1}: missing column(s) {', '.join(missing)}; "
            f"expected {expected}; found {_describe_cells(header)}"
        )
    for index in range(header_index + 1, len(rows)):
        row = rows[index]
        if all(cell is None or str(cell).strip() == "" for cell in row):
            continue
        cells = {key: (row[pos] if pos < len(row) else None) for key, pos in columns.items()}
        if formulas is None and None in cells.values():
            formulas = _unsaved_formulas(path, rows)
        unsaved = [header[pos] for pos in columns.values() if (index, pos) in (formulas or ())]
        if unsaved:
            raise DatasetError(
                f"{path} row {index + 1}: column(s) {', '.join(str(c).strip() for c in unsaved)} hold a formula whose "
                "value was never saved (the file was written by a program that does not compute formulas): open "
                "and save it in a spreadsheet program, or type the values")
        yield SheetRow(number=index + 1, cells=cells)


def _unsaved_formulas(path: Path, values: list[tuple]) -> set[tuple[int, int]]:
    """(row, column) indices of the first sheet's cells that hold a formula but no saved value
    (which openpyxl's cached values read as blank)."""
    import openpyxl

    workbook = openpyxl.load_workbook(path, data_only=False)
    found = set()
    for r, row in enumerate(workbook.worksheets[0].iter_rows(values_only=True)):
        for c, cell in enumerate(row):
            if isinstance(cell, str) and cell.startswith("=") and r < len(values) and c < len(values[r]) \
                    and values[r][c] is None:
                found.add((r, c))
    return found


def _describe_cells(row: tuple) -> str:
    names = [str(cell).strip() for cell in row if cell is not None and str(cell).strip()]
    return ", ".join(names) if names else "no named columns"


def cell_text(value: Any) -> str:
    """A cell as stripped text (None -> ""; 6.0 -> "6")."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cell_int(value: Any) -> int | None:
    """A whole number from a cell stored as number or text (" 46 ", 46.0); blank -> None.

    Raises ValueError for anything else; callers add the file, row and column.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a frame number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number")
    text = cell_text(value)
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"{text!r} is not a whole number")
    return int(number)


def is_missing_apex(value: Any) -> bool:
    """True for the apex spellings that mean 'not annotated': blank, ``/``, ``-``, -1."""
    if value is None:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == -1
    return cell_text(value).lower() in _MISSING_APEX


def required_int(row: SheetRow, key: str, column: str, where: str) -> int:
    """A required whole-number cell, or DatasetError naming ``where`` (file and row) and the column."""
    value = row.cells.get(key)
    try:
        number = cell_int(value)
    except ValueError as error:
        raise DatasetError(f"{where}: column {column}: {error}") from None
    if number is None:
        raise DatasetError(f"{where}: column {column} is blank")
    return number


def optional_apex(row: SheetRow, key: str, column: str, where: str) -> int | None:
    """The apex cell: None when not annotated (blank, ``/``, -1), else a whole number."""
    value = row.cells.get(key)
    if is_missing_apex(value):
        return None
    try:
        return cell_int(value)
    except ValueError as error:
        raise DatasetError(f"{where}: column {column}: {error}") from None


def check_unique(samples: list[Sample], sources: list[str], source: Path) -> None:
    """Raise DatasetError when two annotation rows name the same clip."""
    seen: dict[tuple[str, str], str] = {}
    problems = []
    for sample, where in zip(samples, sources):
        key = (sample.subject, sample.clip)
        if key in seen:
            problems.append(f"{where}: clip {sample.key} is also annotated at {seen[key]}")
        else:
            seen[key] = where
    raise_collected(problems, source)


MENDED_ROWS_FRACTION = 0.05  # rows of a sheet mended with a warning, at most (at least MENDED_ROWS_MIN)
MENDED_ROWS_MIN = 3


def read_sheet_samples(annotation: Path, required: Iterable[str], row_sample: Callable[[SheetRow, str], Sample],
                       dataset_name: str) -> list[Sample]:
    """Every sample of an annotation sheet (CASME II, SAMM), sorted by subject and clip:
    ``row_sample(row, where)`` makes each; the problems of all rows are raised together
    (raise_collected), then an empty sheet, then a clip annotated twice.

    Rows whose frames :func:`make_sample` mended (``extra["mended"]``: the real sheets'
    few rows that disagree with their frames) are named in one DataWarning. More than
    ``max(MENDED_ROWS_MIN, MENDED_ROWS_FRACTION of the rows)`` of them is not a few flawed
    rows but a sheet that does not describe these frames (another version of the data, a
    shifted column): refused, the rows listed.
    """
    samples: list[Sample] = []
    sources: list[str] = []
    problems: list[str] = []
    for row in read_annotation_sheet(annotation, required):
        where = f"{annotation.name} row {row.number}"
        try:
            samples.append(row_sample(row, where))
            sources.append(where)
        except DatasetError as error:
            problems.append(str(error))
    mended = [f"{where} ({sample.key}): {sample.extra['mended']}"
              for sample, where in zip(samples, sources) if "mended" in sample.extra]
    limit = max(MENDED_ROWS_MIN, math.ceil(MENDED_ROWS_FRACTION * (len(samples) + len(problems))))
    if len(mended) > limit:
        raise_collected(mended + problems, annotation,
                        f"{len(mended)} rows disagree with the frames on disk, more than the {limit} the kit mends "
                        f"with a warning: is {annotation.name} the annotation of these frames?")
    raise_collected(problems, annotation)
    if not samples:
        raise DatasetError(f"{annotation}: the sheet has no data rows below its header: no {dataset_name} sample")
    check_unique(samples, sources, annotation)
    if mended:
        warnings.warn(f"{len(mended)} row(s) of {annotation} mended to fit the frames on disk: " + "; ".join(mended),
                      DataWarning, stacklevel=4)
    return sorted(samples, key=lambda s: (s.subject, s.clip))


def sheet_row_sample(row: SheetRow, where: str, *, dataset: str, subject_of: Callable[[Any], str],
                     clips_dir: Path, frame_columns: tuple[str, str, str],
                     lowercase_emotion: bool, extra: dict) -> Sample:
    """The Sample of one annotation-sheet row (CASME II and SAMM share the column keys
    subject, filename, onsetframe, apexframe, offsetframe, estimatedemotion; only the
    spelling of the frame columns, shown in errors, and the subject format differ)."""
    try:
        subject = subject_of(row.cells["subject"])
    except ValueError as error:
        raise DatasetError(f"{where}: column Subject: {error}") from None
    clip = cell_text(row.cells["filename"])
    if not clip:
        raise DatasetError(f"{where}: column Filename is blank")
    emotion = cell_text(row.cells["estimatedemotion"])
    if not emotion:
        raise DatasetError(f"{where}: column Estimated Emotion is blank")
    onset_column, apex_column, offset_column = frame_columns
    return make_sample(
        dataset=dataset,
        subject=subject,
        clip=clip,
        emotion=emotion.lower() if lowercase_emotion else emotion,
        onset=required_int(row, "onsetframe", onset_column, where),
        apex=optional_apex(row, "apexframe", apex_column, where),
        offset=required_int(row, "offsetframe", offset_column, where),
        folder=clips_dir / subject / clip,
        where=where,
        extra={**extra, "annotation": where},
        mend=True,
    )
