"""Dataset readers, protocols and the MEGC2019 list, on tiny fake datasets in native layouts."""
from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pytest

from mer_utils.data import (
    OFFICIAL_MEGC2019_LIST,
    PROTOCOLS,
    load_samples,
    read_casme2,
    read_megc_list,
    read_samm,
    read_smic,
    samples_to_records,
    summary_table,
)
from mer_utils.errors import DatasetError, DataWarning

# ----------------------------------------------------------------------------- fake datasets

CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion "]  # trailing space in a header: a known quirk
# (subject cell, filename cell, onset, apex, offset, emotion): text numbers, spaces, "/" and blank apex
CASME2_ROWS = [
    (1, "EP02_01f", 5, 9, 12, "happiness"),
    ("2 ", " EP09_03 ", "3", "/", "11", " Disgust "),
    (2, "EP11_01", 1, 3, 6, "repression"),
    (3, "EP01_2", 2, 4, 8, "others"),
    (3, "EP05_02", 1, None, 4, "sadness"),
    (4, "EP13_04", 10, 12, 14, "surprise"),
]
SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
               "Duration", "Micro", "Action Units", "Notes", "Estimated Emotion", "Objective Classes"]
SAMM_ROWS = [
    (6, "006_1_2", 100, 104, 110, "Anger"),
    ("7", "007_3_1", 5562, -1, 5570, "Happiness"),
    (7, "007_5_3", 20, "/", 24, "Other"),
    (9, "009_2_1", 8, 10, 12, "Surprise "),
    ("009", "009_3_2", 1, 2, 3, "Contempt"),
]
# subject, class folder, clip, first frame, last frame
SMIC_CLIPS = [
    ("s1", "negative", "s1_ne_01", 120, 130),
    ("s1", "positive", "s1_po_01", 7, 12),
    ("s2", "surprise", "s2_sur_01", 5, 14),
]
_PIXELS = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)


def write_frames(folder: Path, numbers, name: str) -> None:
    """Tiny 8x8 images named ``name.format(n)`` (e.g. ``img{}.jpg``) for each frame number."""
    folder.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(Path(name).suffix, _PIXELS)
    assert ok
    for number in numbers:
        (folder / name.format(number)).write_bytes(encoded.tobytes())


def as_int(cell) -> int:
    return int(str(cell).strip())


def write_sheet(path: Path, header, rows, preamble=()) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for line in preamble:
        sheet.append(list(line))
    sheet.append(list(header))
    for row in rows:
        sheet.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)


def make_casme2(root: Path, rows=CASME2_ROWS, header=CASME2_HEADER, variants=("raw",)) -> Path:
    folder = root / "CASME2"
    cells = [(s, f, None, on, ap, off, None, "4+7", emo) for s, f, on, ap, off, emo in rows]
    write_sheet(folder / "CASME2-coding-20140508.xlsx", header, cells)
    for subject, clip, onset, _, offset, _ in rows:
        frames = range(as_int(onset), as_int(offset) + 1)
        subject_dir = f"sub{as_int(subject):02d}"
        if "raw" in variants:
            write_frames(folder / "CASME2_RAW_selected" / subject_dir / clip.strip(), frames, "img{}.jpg")
        if "cropped" in variants:
            write_frames(folder / "Cropped" / subject_dir / clip.strip(), frames, "reg_img{}.jpg")
    return folder


SAMM_PREAMBLE = [["SAMM micro-movement FACS codes"], ["Version 2"], []] + [[f"note {i}"] for i in range(10)]


def make_samm(root: Path, rows=SAMM_ROWS, header=SAMM_HEADER, preamble=SAMM_PREAMBLE) -> Path:
    folder = root / "SAMM"
    cells = [(s, f, "1", on, ap, off, 10, "Micro - 1/2", "R12", "", emo, "Class 1")
             for s, f, on, ap, off, emo in rows]
    write_sheet(folder / "SAMM_Micro_FACS_Codes_v2.xlsx", header, cells, preamble)
    for subject, clip, onset, _, offset, _ in rows:
        subject_dir = f"{as_int(subject):03d}"
        write_frames(folder / subject_dir / clip, range(as_int(onset), as_int(offset) + 1),
                     subject_dir + "_{:05d}.jpg")
    return folder


def make_smic(root: Path, clips=SMIC_CLIPS) -> Path:
    folder = root / "SMIC"
    for subject, emotion, clip, first, last in clips:
        write_frames(folder / "HS" / subject / "micro" / emotion / clip, range(first, last + 1),
                     "image{:06d}.bmp")
    (folder / "HS" / "s3" / "non_micro").mkdir(parents=True)  # a subject without micro clips
    return folder


def by_clip(samples):
    return {s.clip: s for s in samples}


# ----------------------------------------------------------------------------- readers


def test_read_casme2_records(tmp_path):
    samples = by_clip(read_casme2(make_casme2(tmp_path)))
    assert sorted(samples) == ["EP01_2", "EP02_01f", "EP05_02", "EP09_03", "EP11_01", "EP13_04"]
    first = samples["EP02_01f"]
    assert (first.dataset, first.subject, first.subject_id) == ("casme2", "sub01", "sub01")
    assert (first.onset, first.apex, first.offset, first.apex_inferred) == (5, 9, 12, False)
    assert first.frame_numbers == tuple(range(5, 13))  # numeric order: 9 before 10
    assert [p.name for p in first.frames[4:6]] == ["img9.jpg", "img10.jpg"]
    assert first.frame_path(10).name == "img10.jpg"
    assert first.label is None and first.emotion == "happiness"
    assert first.extra["variant"] == "raw" and first.extra["action_units"] == "4+7"
    quirky = samples["EP09_03"]  # text numbers, spaces, apex "/"
    assert (quirky.subject, quirky.emotion) == ("sub02", "disgust")
    assert (quirky.onset, quirky.apex, quirky.offset, quirky.apex_inferred) == (3, 7, 11, True)
    blank_apex = samples["EP05_02"]
    assert (blank_apex.apex, blank_apex.apex_inferred) == (2, True)


def test_casme2_variants(tmp_path):
    folder = make_casme2(tmp_path, variants=("raw", "cropped"))
    assert read_casme2(folder)[0].frames[0].parent.parent.parent.name == "CASME2_RAW_selected"
    cropped = read_casme2(folder, variant="cropped")
    assert cropped[0].frames[0].name.startswith("reg_img") and cropped[0].extra["variant"] == "cropped"
    only_cropped = make_casme2(tmp_path / "b", variants=("cropped",))
    assert read_casme2(only_cropped, variant="auto")[0].extra["variant"] == "cropped"
    with pytest.raises(DatasetError, match="CASME2_RAW_selected"):
        read_casme2(only_cropped, variant="raw")
    with pytest.raises(DatasetError, match="not one of auto, raw, cropped"):
        read_casme2(folder, variant="aligned")


def test_the_folder_levels_the_real_archives_unpack_into_are_read(tmp_path):
    """CASME2_RAW_selected twice, the 2019 release's Cropped-updated/Cropped, SAMM/SAMM with
    the dated sheet name, SMIC/SMIC_all_raw/HS and SMIC_all_cropped/HS: read as the flat
    layouts, the same clips."""
    import shutil

    flat = len(read_casme2(make_casme2(tmp_path / "flat")))
    folder = make_casme2(tmp_path / "twice")
    raw = folder / "CASME2_RAW_selected"
    raw.rename(folder / "tmp")
    raw.mkdir()
    (folder / "tmp").rename(raw / "CASME2_RAW_selected")
    assert len(read_casme2(folder)) == flat
    folder = make_casme2(tmp_path / "updated", variants=("cropped",))
    (folder / "Cropped-updated").mkdir()
    (folder / "Cropped").rename(folder / "Cropped-updated" / "Cropped")
    (folder / "CASME2-coding-20140508.xlsx").rename(folder / "CASME2-coding-20190701.xlsx")
    samples = read_casme2(folder)
    assert len(samples) == flat and samples[0].extra["variant"] == "cropped"

    folder = make_samm(tmp_path / "samm")
    nested = folder / "SAMM"
    nested.mkdir()
    for child in list(folder.iterdir()):
        if child.name != "SAMM":
            child.rename(nested / child.name)
    (nested / "SAMM_Micro_FACS_Codes_v2.xlsx").rename(nested / "SAMM_20181215_Micro_FACS_Codes_v2.xlsx")
    assert len(read_samm(folder)) == len(SAMM_ROWS)
    shutil.copy(nested / "SAMM_20181215_Micro_FACS_Codes_v2.xlsx", nested / "SAMM_Micro_FACS_Codes_v1.xlsx")
    with pytest.raises(DatasetError, match=r"expected one annotation file SAMM\*Micro_FACS_Codes\*\.xlsx, found "
                                           r"SAMM_20181215_Micro_FACS_Codes_v2\.xlsx, SAMM_Micro_FACS_Codes_v1\.xlsx"):
        read_samm(folder)

    smic_e = tmp_path / "smic-e" / "SMIC"
    write_frames(smic_e / "HS" / "s01" / "s01_ne_01", range(1, 4), "{:06d}.jpg")  # SMIC-E's HS_long-like layout
    with pytest.raises(DatasetError, match=r"no clips found .*SMIC-E's long recordings, HS_long, are not read"):
        read_smic(smic_e)

    for release in ("SMIC_all_cropped", "SMIC_all_raw"):
        smic = make_smic(tmp_path / release)
        (smic / release).mkdir()
        (smic / "HS").rename(smic / release / "HS")
        samples = read_smic(smic)
        assert len(samples) == len(SMIC_CLIPS) and release in str(samples[0].frames[0])


def test_read_samm_records(tmp_path):
    samples = by_clip(read_samm(make_samm(tmp_path)))
    assert sorted(samples) == ["006_1_2", "007_3_1", "007_5_3", "009_2_1", "009_3_2"]
    assert {s.subject for s in samples.values()} == {"006", "007", "009"}
    anger = samples["006_1_2"]
    assert (anger.onset, anger.apex, anger.offset, anger.apex_inferred, anger.emotion) == (100, 104, 110, False, "Anger")
    happy = samples["007_3_1"]  # apex -1
    assert happy.frame_numbers[0] == 5562 and happy.frames[0].name == "007_05562.jpg"
    assert (happy.apex, happy.apex_inferred) == (5566, True)
    assert (samples["007_5_3"].apex, samples["007_5_3"].apex_inferred) == (22, True)  # apex "/"
    assert samples["009_2_1"].emotion == "Surprise"


def test_samm_header_found_after_any_preamble(tmp_path):
    short = read_samm(make_samm(tmp_path / "a", preamble=[["title"], []]))
    assert len(short) == len(SAMM_ROWS)
    folder = make_samm(tmp_path / "b", preamble=[["title"]] * 31)
    with pytest.raises(DatasetError, match=r"SAMM_Micro_FACS_Codes_v2\.xlsx: no header row.*Subject and Filename.*first sheet, .Sheet. \(the one the kit reads\)"):
        read_samm(folder)


def test_read_smic_records(tmp_path):
    folder = make_smic(tmp_path)
    samples = by_clip(read_smic(folder))
    assert by_clip(read_smic(folder / "HS")).keys() == samples.keys()  # the HS folder itself works too
    assert sorted(samples) == ["s1_ne_01", "s1_po_01", "s2_sur_01"]
    negative = samples["s1_ne_01"]
    assert (negative.subject, negative.emotion) == ("s1", "negative")
    assert (negative.onset, negative.apex, negative.offset, negative.apex_inferred) == (120, 125, 130, True)
    assert (samples["s1_po_01"].apex, samples["s2_sur_01"].apex) == (9, 9)  # middle: onset + (offset-onset)//2
    assert [p.name for p in samples["s2_sur_01"].frames[4:6]] == ["image000009.bmp", "image000010.bmp"]
    with pytest.raises(DatasetError, match="expected a SMIC folder holding HS"):
        read_smic(tmp_path)


def test_smic_reads_a_micro_folder_in_any_case_and_names_folders_it_leaves_out(tmp_path):
    folder = make_smic(tmp_path)
    (folder / "HS" / "s1" / "micro").rename(folder / "HS" / "s1" / "Micro")
    (folder / "HS" / "s2").rename(folder / "HS" / "subject2")
    with pytest.warns(UserWarning, match=r"HS: folder\(s\) subject2 left out: SMIC-HS subject folders are named s1, s2"):
        samples = by_clip(read_smic(folder))
    assert sorted(samples) == ["s1_ne_01", "s1_po_01"]


# ----------------------------------------------------------------------------- reader errors


def test_a_formula_without_a_saved_value_is_named_not_read_as_blank(tmp_path):
    folder = make_samm(tmp_path)
    sheet_path = folder / "SAMM_Micro_FACS_Codes_v2.xlsx"
    workbook = openpyxl.load_workbook(sheet_path)
    sheet = workbook.active
    header_row = len(SAMM_PREAMBLE) + 1
    apex_column = [c.value for c in sheet[header_row]].index(SAMM_HEADER[4]) + 1
    sheet.cell(row=header_row + 1, column=apex_column, value="=D15+3")  # openpyxl saves no computed value
    workbook.save(sheet_path)
    with pytest.raises(DatasetError, match=rf"SAMM_Micro_FACS_Codes_v2\.xlsx row {header_row + 1}: column\(s\) "
                                           rf"{SAMM_HEADER[4]} hold a formula whose value was never saved"):
        read_samm(folder)


def casme2_with(tmp_path, index, row):
    rows = list(CASME2_ROWS)
    rows[index] = row
    return make_casme2(tmp_path, rows=rows)


def test_casme2_missing_column_names_expected_and_found(tmp_path):
    header = [("Apex" if h == "ApexFrame" else h) for h in CASME2_HEADER]
    with pytest.raises(DatasetError) as raised:
        read_casme2(make_casme2(tmp_path, header=header))
    message = str(raised.value)
    assert "CASME2-coding-20140508.xlsx row 1: missing column(s) ApexFrame" in message
    assert "expected Subject, Filename, OnsetFrame" in message and "found Subject, Filename, OnsetFrame, Apex," in message


def test_samm_missing_column_names_header_row(tmp_path):
    header = [("Emotion" if h == "Estimated Emotion" else h) for h in SAMM_HEADER]
    with pytest.raises(DatasetError, match=r"SAMM_Micro_FACS_Codes_v2\.xlsx row 14: missing column\(s\) Estimated Emotion"):
        read_samm(make_samm(tmp_path, header=header))


def test_onset_after_offset_names_row(tmp_path):
    folder = casme2_with(tmp_path, 2, (2, "EP11_01", 6, 6, 6, "repression"))
    wb = openpyxl.load_workbook(folder / "CASME2-coding-20140508.xlsx")
    wb.active["F4"] = 2  # OffsetFrame of the third data row (Excel row 4)
    wb.save(folder / "CASME2-coding-20140508.xlsx")
    with pytest.raises(DatasetError, match=r"row 4: onset 6 is after offset 2 \(casme2/sub02/EP11_01\)"):
        read_casme2(folder)


def test_rows_that_disagree_with_their_frames_as_the_real_sheets_do_are_mended_with_one_warning(tmp_path):
    """The real sheets hold a few such rows (an apex outside its clip in SAMM, a CASME II clip
    whose last annotated frames are not on disk, an offset typed before the onset): each is
    mended to the frames on disk and named, with the row, in one DataWarning."""
    rows = list(SAMM_ROWS)
    rows[0] = (6, "006_1_2", 100, 150, 110, "Anger")  # apex outside [onset, offset]
    folder = make_samm(tmp_path, rows=rows)
    with pytest.warns(DataWarning, match=r"1 row\(s\) of .*SAMM_Micro_FACS_Codes_v2\.xlsx mended to fit the frames on "
                                         r"disk: SAMM_Micro_FACS_Codes_v2\.xlsx row 15 \(samm/006/006_1_2\): apex 150 is "
                                         r"outside \[onset 100, offset 110\]: the middle frame 105 is used"):
        sample = by_clip(read_samm(folder))["006_1_2"]
    assert (sample.onset, sample.apex, sample.offset, sample.apex_inferred) == (100, 105, 110, True)
    assert sample.extra["annotated_apex"] == 150 and "apex 150" in sample.extra["mended"]

    folder = make_casme2(tmp_path / "casme2")
    clip = folder / "CASME2_RAW_selected" / "sub04" / "EP13_04"
    (clip / "img14.jpg").unlink()  # the annotated offset's file is missing: 10..13 on disk
    (clip / "img10.jpg").unlink()  # and the onset's
    with pytest.warns(DataWarning) as caught:
        sample = by_clip(read_casme2(folder))["EP13_04"]
    message = str(caught[0].message)
    assert "row 7 (casme2/sub04/EP13_04): onset frame 10 has no file: the clip starts at the next frame on disk, 11" in message
    assert "offset frame 14 has no file (frames on disk: 11..13): the clip ends at the last frame on disk before it, 13" in message
    assert (sample.onset, sample.apex, sample.offset, sample.apex_inferred) == (11, 12, 13, False)  # apex 12 kept

    wb = openpyxl.load_workbook(folder / "CASME2-coding-20140508.xlsx")
    wb.active["F2"] = 2  # sub01/EP02_01f: offset 2 typed before onset 5; frames 5..12 on disk
    wb.save(folder / "CASME2-coding-20140508.xlsx")
    with pytest.warns(DataWarning, match=r"row 2 \(casme2/sub01/EP02_01f\): offset 2 is before onset 5: the clip ends "
                                         r"at its folder's last frame, 12"):
        sample = by_clip(read_casme2(folder))["EP02_01f"]
    assert (sample.onset, sample.apex, sample.offset) == (5, 9, 12)


def test_a_sheet_with_many_rows_that_disagree_with_the_frames_is_refused(tmp_path):
    """More rows to mend than a few flawed ones (at least 3, or 5 % of the rows) means the sheet
    does not describe these frames: refused, listing the rows, nothing mended silently."""
    rows = [(6, f"006_1_{i}", 100, 150, 110, "Anger") for i in range(4)] + list(SAMM_ROWS[1:])
    with pytest.raises(DatasetError) as raised:
        read_samm(make_samm(tmp_path, rows=rows))
    message = str(raised.value)
    assert message.startswith("4 rows disagree with the frames on disk, more than the 3 the kit mends with a warning: "
                              "is SAMM_Micro_FACS_Codes_v2.xlsx the annotation of these frames? reading ")
    assert message.count("apex 150 is outside [onset 100, offset 110]") == 4


def test_missing_clip_folder_names_row_and_folder(tmp_path):
    folder = make_casme2(tmp_path)
    clip_dir = folder / "CASME2_RAW_selected" / "sub03" / "EP01_2"
    for frame in clip_dir.iterdir():
        frame.unlink()
    clip_dir.rmdir()
    with pytest.raises(DatasetError, match=r"row 5: clip folder .*sub03/EP01_2 does not exist"):
        read_casme2(folder)


def test_empty_clip_folder_is_an_error(tmp_path):
    folder = make_samm(tmp_path)
    for frame in (folder / "009" / "009_3_2").iterdir():
        frame.unlink()
    with pytest.raises(DatasetError, match=r"row 19: clip folder .*009/009_3_2 holds no frame images"):
        read_samm(folder)



def test_a_smic_clip_folder_without_frames_is_left_out_and_a_list_naming_it_says_so(root):
    """SMIC has no sheet: its clips are its folders, and the real SMIC_all_cropped holds one
    folder whose frames were lost (s18_sur_03, in the official list). It is left out with a
    warning; a sample list naming it runs on the rest and says how many remain."""
    (root / "SMIC" / "HS" / "s2" / "micro" / "surprise" / "s2_sur_02").mkdir()
    with pytest.warns(DataWarning, match=r"1 SMIC-HS clip folder\(s\) without frame images left out: .*s2_sur_02"):
        assert "s2_sur_02" not in by_clip(read_smic(root / "SMIC"))
    path = root / "gt.csv"
    path.write_text(OFFICIAL_STYLE + "smic,s02,s02_sur_02,2\n")
    with pytest.warns(DataWarning) as caught:
        samples = load_samples(root, "megc2019", megc_list=path)
    assert len(samples) == 4 and "s2_sur_02" not in by_clip(samples)
    assert any(str(w.message).startswith("1 sample(s) listed in ") and "left out, so the set holds 4 of its 5: "
               "smic/s2/s2_sur_02 (line 7): its folder " in str(w.message) for w in caught)


def test_an_annotated_frame_without_file_inside_the_window_is_mended_and_a_window_without_frames_refused(tmp_path):
    folder = make_casme2(tmp_path)
    clip = folder / "CASME2_RAW_selected" / "sub04" / "EP13_04"
    (clip / "img12.jpg").unlink()  # the annotated apex
    with pytest.warns(DataWarning, match=r"row 7 \(casme2/sub04/EP13_04\): apex 12 has no file: the middle frame 11 is used"):
        assert by_clip(read_casme2(folder))["EP13_04"].apex == 11
    for number in (11, 13, 14):
        (clip / f"img{number}.jpg").unlink()  # only the onset, 10, is left: nothing to mend with
    with pytest.raises(DatasetError, match=r"row 7: offset frame 14 has no file in .*sub04/EP13_04 \(frames on disk: 10\.\.10"):
        read_casme2(folder)


def test_unannotated_apex_in_a_gap_is_the_nearest_frame_on_disk(tmp_path):
    """SMIC has no apex: the middle frame is used. Where the folder's numbers skip it, the
    nearest frame on disk (the earlier on a tie), not an error about a frame nobody gave."""
    smic = make_smic(tmp_path / "smic")
    clip = smic / "HS" / "s1" / "micro" / "negative" / "s1_ne_01"
    sample = next(s for s in read_smic(smic) if s.clip == "s1_ne_01")
    middle = sample.apex
    assert sample.apex_inferred and middle not in (sample.onset, sample.offset)
    (clip / f"image{middle:06d}.bmp").unlink()
    sample = next(s for s in read_smic(smic) if s.clip == "s1_ne_01")
    assert sample.apex == middle - 1 and sample.apex in sample.frame_numbers and sample.apex_inferred


def test_clip_of_one_frame_is_refused_naming_the_row(tmp_path):
    """onset == offset leaves eq. 5 nothing to sum (an all-zero image): one line naming the row."""
    folder = make_casme2(tmp_path, rows=[(1, "EP02_01f", 5, 5, 5, "happiness"), *CASME2_ROWS[1:]])
    with pytest.raises(DatasetError) as caught:
        read_casme2(folder)
    message = str(caught.value)
    assert "\n" not in message and "row 2: onset and offset are both frame" in message
    assert "a clip needs at least two frames" in message


def test_zero_byte_frame_names_the_file(tmp_path):
    folder = make_casme2(tmp_path)
    (folder / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "img7.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"row 2: frame file .*sub01/EP02_01f/img7\.jpg is empty \(0 bytes\)"):
        read_casme2(folder)


def test_bad_cells_are_collected_with_row_and_column(tmp_path):
    folder = make_casme2(tmp_path, rows=CASME2_ROWS[:2])
    write_sheet(folder / "CASME2-coding-20140508.xlsx", CASME2_HEADER, [
        (1, "EP02_01f", None, "five", 9, 12, None, "", "happiness"),
        ("x3", "EP09_03", None, 3, 7, 11, None, "", "disgust"),
        (2, "EP09_03", None, 3, 7, 11, None, "", ""),
    ])
    with pytest.raises(DatasetError) as raised:
        read_casme2(folder)
    message = str(raised.value)
    assert message.startswith("3 problem(s) reading") and "CASME2-coding-20140508.xlsx" in message
    assert "row 2: column OnsetFrame: 'five' is not a number" in message
    assert "row 3: column Subject: subject 'x3' is not a number" in message
    assert "row 4: column Estimated Emotion is blank" in message


def test_duplicate_clip_rows_are_an_error(tmp_path):
    rows = list(SAMM_ROWS) + [SAMM_ROWS[0]]
    with pytest.raises(DatasetError, match=r"row 20: clip samm/006/006_1_2 is also annotated at SAMM_Micro_FACS_Codes_v2\.xlsx row 15"):
        read_samm(make_samm(tmp_path, rows=rows))


# ----------------------------------------------------------------------------- protocols


@pytest.fixture
def root(tmp_path):
    make_casme2(tmp_path)
    make_samm(tmp_path)
    make_smic(tmp_path)
    return tmp_path


def test_casme2_five_class_protocol(root):
    samples = load_samples(root, "casme2-5class")
    assert [(s.subject_id, s.clip, s.label) for s in samples] == [
        ("sub01", "EP02_01f", "happiness"),
        ("sub02", "EP09_03", "disgust"),
        ("sub02", "EP11_01", "repression"),
        ("sub03", "EP01_2", "others"),
        ("sub04", "EP13_04", "surprise"),
    ]  # sadness is outside the five classes
    assert all(s.label in PROTOCOLS["casme2-5class"].classes for s in samples)


def test_an_emotion_no_dataset_uses_is_a_warning_naming_the_clip_and_row(tmp_path):
    """A typo ("happyness") would leave the clip out like an excluded emotion ("sadness"):
    the excluded one stays quiet, the typo is named with its sheet row."""
    make_casme2(tmp_path, rows=[*CASME2_ROWS, (4, "EP14_01", 20, 22, 25, "Happyness")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = load_samples(tmp_path, "casme2-5class")
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "1 clip(s) left out: their emotion is not one the dataset uses (casme2: others" in messages[0]
    assert "casme2/sub04/EP14_01 ('happyness', CASME2-coding-20140508.xlsx row 8)" in messages[0]
    assert "casme2/sub04/EP14_01" not in {s.key for s in samples} and len(samples) == 5


def test_megc2019_emotion_mapping_warns(root):
    with pytest.warns(UserWarning, match="not the official MEGC2019 list"):
        samples = load_samples(root, "megc2019")
    labels = {s.key: (s.subject_id, s.label) for s in samples}
    assert labels == {
        "casme2/sub01/EP02_01f": ("casme2/sub01", "positive"),
        "casme2/sub02/EP09_03": ("casme2/sub02", "negative"),
        "casme2/sub02/EP11_01": ("casme2/sub02", "negative"),
        "casme2/sub04/EP13_04": ("casme2/sub04", "surprise"),
        "samm/006/006_1_2": ("samm/006", "negative"),
        "samm/007/007_3_1": ("samm/007", "positive"),
        "samm/009/009_2_1": ("samm/009", "surprise"),
        "samm/009/009_3_2": ("samm/009", "negative"),
        "smic/s1/s1_ne_01": ("smic/s1", "negative"),
        "smic/s1/s1_po_01": ("smic/s1", "positive"),
        "smic/s2/s2_sur_01": ("smic/s2", "surprise"),
    }  # CASME II others/sadness and SAMM Other are excluded
    assert [(s.subject_id, s.clip) for s in samples] == sorted((s.subject_id, s.clip) for s in samples)


def test_megc2019_uses_the_datasets_present(tmp_path):
    make_smic(tmp_path)
    with pytest.warns(UserWarning, match="over smic"):
        assert {s.dataset for s in load_samples(tmp_path, "megc2019")} == {"smic"}
    with pytest.raises(DatasetError, match="none of the dataset folders CASME2, SAMM, SMIC"):
        load_samples(tmp_path / "SMIC" / "HS", "megc2019")


def test_protocol_argument_errors(root):
    with pytest.raises(DatasetError, match="unknown protocol 'megc'; known protocols: casme2-5class, megc2019"):
        load_samples(root, "megc")
    with pytest.raises(DatasetError, match="only applies to protocol megc2019"):
        load_samples(root, "casme2-5class", megc_list=OFFICIAL_MEGC2019_LIST)
    with pytest.raises(DatasetError, match="CASME2/ is missing"):
        load_samples(root / "SMIC", "casme2-5class")


# ----------------------------------------------------------------------------- MEGC2019 list

OFFICIAL_STYLE = """casme2,sub01,EP02_01f,1

samm,6,006_1_2,0
smic,s01,s01_ne_01,0
casme2,3,EP01_2,2
,,,
"""


def test_megc_list_official_format_normalises_names(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(OFFICIAL_STYLE)
    entries = read_megc_list(path)
    assert [(e.key, e.label, e.line) for e in entries] == [
        ("casme2/sub01/EP02_01f", "positive", 1),
        ("samm/006/006_1_2", "negative", 3),
        ("smic/s1/s1_ne_01", "negative", 4),
        ("casme2/sub03/EP01_2", "surprise", 5),
    ]
    with_header = tmp_path / "composite.csv"
    with_header.write_text("dataset,subject,clip,label\n" + OFFICIAL_STYLE.replace("samm,6,006", "samm,006,6"))
    assert [e.key for e in read_megc_list(with_header)] == [e.key for e in entries]


def test_a_megc_list_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(OFFICIAL_STYLE, encoding="utf-16")
    with pytest.raises(DatasetError, match=r"gt\.csv is not UTF-8 text: save it as UTF-8 CSV"):
        read_megc_list(path)


@pytest.mark.parametrize(
    "line, message",
    [
        ("casme2,sub01,EP02_01f", "expected 4 fields"),
        ("casme3,sub01,EP02_01f,1", "unknown dataset 'casme3'"),
        ("samm,6,006_1_2,3", "label '3' is not 0, 1 or 2"),
        ("smic,x,s1_ne_01,0", "subject 'x' is not a smic subject"),
        ("samm,006,006_1_2,1", r"samm/006/006_1_2 is listed again \(first at line 2\)"),
    ],
)
def test_megc_list_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "gt.csv"
    path.write_text(f"casme2,sub01,EP02_01f,1\nsamm,6,006_1_2,0\n\n{line}\n")
    with pytest.raises(DatasetError, match=rf"gt\.csv line 4: {message}"):
        read_megc_list(path)


def test_load_samples_with_list_is_exactly_the_list(root):
    path = root / "gt.csv"
    path.write_text(OFFICIAL_STYLE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not the official list" warning with a list
        samples = load_samples(root, "megc2019", megc_list=path)
    assert [(s.subject_id, s.clip, s.label) for s in samples] == [
        ("casme2/sub01", "EP02_01f", "positive"),
        ("casme2/sub03", "EP01_2", "surprise"),  # emotion "others": the list, not the mapping, decides
        ("samm/006", "006_1_2", "negative"),
        ("smic/s1", "s1_ne_01", "negative"),
    ]
    assert samples[1].emotion == "others"


def test_listed_but_missing_samples_are_named(root):
    path = root / "gt.csv"
    path.write_text(OFFICIAL_STYLE + "".join(f"casme2,sub09,EP{i:02d},0\n" for i in range(12)))
    with pytest.raises(DatasetError) as raised:
        load_samples(root, "megc2019", megc_list=path)
    message = str(raised.value)
    assert message.startswith("12 sample(s) listed in") and "gt.csv" in message
    assert "casme2/sub09/EP00 (line 7)" in message and "and 2 more" in message


def test_listed_dataset_folder_must_exist(tmp_path):
    make_casme2(tmp_path)
    path = tmp_path / "gt.csv"
    path.write_text(OFFICIAL_STYLE)
    with pytest.raises(DatasetError, match="SAMM/ is missing"):
        load_samples(tmp_path, "megc2019", megc_list=path)


def test_official_list_ships_with_442_samples():
    entries = read_megc_list(OFFICIAL_MEGC2019_LIST)
    assert len(entries) == 442
    assert Counter(e.dataset for e in entries) == {"casme2": 145, "samm": 133, "smic": 164}
    assert Counter((e.dataset, e.label) for e in entries) == {
        ("casme2", "negative"): 88, ("casme2", "positive"): 32, ("casme2", "surprise"): 25,
        ("samm", "negative"): 92, ("samm", "positive"): 26, ("samm", "surprise"): 15,
        ("smic", "negative"): 70, ("smic", "positive"): 51, ("smic", "surprise"): 43,
    }
    subjects = Counter(e.dataset for e in {(e.dataset, e.subject): e for e in entries}.values())
    assert subjects == {"casme2": 24, "samm": 28, "smic": 16}
    assert {e.subject for e in entries if e.dataset == "smic"} >= {"s1", "s20"}
    assert all(e.clip.startswith(e.subject + "_") for e in entries if e.dataset in ("smic", "samm"))


# ----------------------------------------------------------------------------- CLI helpers


def test_records_and_summary_table(root):
    with pytest.warns(UserWarning):
        samples = load_samples(root, "megc2019")
    records = samples_to_records(samples)
    assert json.loads(json.dumps(records)) == records
    assert set(records[0]) == {"dataset", "subject", "subject_id", "clip", "emotion", "label", "onset",
                               "apex", "offset", "apex_inferred", "n_frames"}
    assert records[0]["n_frames"] == samples[0].n_frames
    table = summary_table(samples, classes=PROTOCOLS["megc2019"].classes)
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert table.splitlines()[0].split() == ["label", "negative", "positive", "surprise", "total", "subjects"]
    assert lines["casme2"] == ["2", "1", "1", "4", "3"]
    assert lines["samm"] == ["2", "1", "1", "4", "3"]
    assert lines["smic"] == ["1", "1", "1", "3", "2"]
    assert lines["total"] == ["5", "3", "3", "11", "8"]
    assert "emotion" in summary_table(read_smic(root / "SMIC")).splitlines()[0]
    five_class = summary_table(load_samples(root, "casme2-5class")).splitlines()[0].split()
    assert five_class == ["label", "others", "disgust", "happiness", "repression", "surprise", "total", "subjects"]


# ----------------------------------------------------------------------------- issue 10: empty input


@pytest.mark.parametrize("dataset", ["casme2", "samm"])
def test_sheet_with_a_header_and_no_rows_is_an_error_naming_it(tmp_path, dataset):
    if dataset == "casme2":
        make_casme2(tmp_path, rows=[]).joinpath("CASME2_RAW_selected").mkdir()
        sheet, protocol, reader = "CASME2-coding-20140508.xlsx", "casme2-5class", read_casme2
    else:
        make_samm(tmp_path, rows=[])
        sheet, protocol, reader = "SAMM_Micro_FACS_Codes_v2.xlsx", "megc2019", read_samm
    message = rf"{sheet}: the sheet has no data rows below its header: no (CASME II|SAMM) sample"
    with pytest.raises(DatasetError, match=message):
        reader(tmp_path / ("CASME2" if dataset == "casme2" else "SAMM"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DatasetError, match=message):
            load_samples(tmp_path, protocol)


def test_megc2019_does_not_drop_an_empty_dataset_silently(tmp_path):
    make_smic(tmp_path)
    make_casme2(tmp_path, rows=[]).joinpath("CASME2_RAW_selected").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DatasetError, match=r"CASME2-coding-20140508\.xlsx: the sheet has no data rows"):
            load_samples(tmp_path, "megc2019")
    make_casme2(tmp_path, rows=[(3, "EP01_2", 2, 4, 8, "others")])  # rows, but none in the protocol's classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(DatasetError, match=r"CASME2: none of its 1 clips has an emotion of protocol megc2019 "
                                               r"\(disgust, happiness, repression, surprise\): no casme2 sample"):
            load_samples(tmp_path, "megc2019")


def test_protocol_with_zero_samples_is_an_error(tmp_path):
    make_casme2(tmp_path, rows=[(3, "EP05_02", 1, None, 4, "sadness")])
    with pytest.raises(DatasetError, match=r"CASME2: none of its 1 clips has an emotion of protocol casme2-5class"):
        load_samples(tmp_path, "casme2-5class")


def test_data_root_that_is_a_file_is_said_to_be_no_folder(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n")
    with pytest.raises(DatasetError, match=r"data root .*README\.md is not a folder"):
        load_samples(readme, "casme2-5class")
    with pytest.raises(DatasetError, match=r"data root .*nowhere does not exist"):
        load_samples(tmp_path / "nowhere", "casme2-5class")
    assert readme.read_text() == "# my notes\n"
