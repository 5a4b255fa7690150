"""Benchmark apex spotting against the middle-frame guess: run by hand, not a test.

    .venv/bin/python benchmarks/apex.py --root data/synthetic

For every CASME II and SAMM clip with an annotated apex (rows whose apex is blank or ``/``
are left out: they have nothing to compare with), the spotted apex
(``mer_utils.spotting.spot_sample_apex``: aligned crops from onset to offset, largest
smoothed change from the onset) and the middle frame ``onset + (offset - onset) // 2`` are
compared with the annotation. Prints, per dataset and overall, the number of clips and the
mean absolute error in frames of each, side by side, and the mean clip length for scale.
``--csv`` also writes the per-clip table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from mer_utils.data import read_casme2, read_samm
from mer_utils.preprocess import infer_apex
from mer_utils.spotting import spot_sample_apex


def apex_errors(root: Path, face_crop: str = "dlib", size: int = 128) -> pd.DataFrame:
    """One row per annotated CASME II / SAMM clip under ``root``: annotated, spotted and middle
    apex and their absolute errors in frames."""
    readers = {"casme2": (read_casme2, "CASME2"), "samm": (read_samm, "SAMM")}
    rows = []
    for dataset, (reader, folder) in readers.items():
        if not (root / folder).is_dir():
            continue
        for sample in reader(root / folder):
            if sample.apex_inferred:
                continue
            spotted = spot_sample_apex(sample, face_crop=face_crop, size=size).apex
            middle = infer_apex(sample.onset, sample.offset)
            rows.append({"dataset": dataset, "clip": sample.key, "frames": sample.offset - sample.onset + 1,
                         "annotated": sample.apex, "spotted": spotted, "middle": middle,
                         "error_spotted": abs(spotted - sample.apex), "error_middle": abs(middle - sample.apex)})
    return pd.DataFrame(rows)


def summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and overall: clips, mean clip length, MAE (frames) of spotting and of the middle frame."""
    groups = [(name, part) for name, part in errors.groupby("dataset")] + [("all", errors)]
    return pd.DataFrame(
        [{"dataset": name, "clips": len(part), "mean frames": round(part["frames"].mean(), 1),
          "MAE spotted": round(part["error_spotted"].mean(), 2), "MAE middle": round(part["error_middle"].mean(), 2)}
         for name, part in groups]).set_index("dataset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/synthetic"), help="folder holding CASME2/ and/or SAMM/")
    parser.add_argument("--face-crop", default="dlib", choices=("dlib", "none"))
    parser.add_argument("--size", type=int, default=128, help="side of the aligned crops")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-clip errors here")
    args = parser.parse_args()
    clock = time.perf_counter()
    errors = apex_errors(args.root, args.face_crop, args.size)
    if errors.empty:
        raise SystemExit(f"no CASME II or SAMM clip with an annotated apex under {args.root}")
    if args.csv:
        errors.to_csv(args.csv, index=False)
    print(f"apex error in frames against the annotation, {args.root} ({time.perf_counter() - clock:.1f} s)")
    print(summary(errors).to_string())


if __name__ == "__main__":
    main()
