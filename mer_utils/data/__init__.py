"""Dataset layer: readers of CASME II, SAMM and SMIC-HS in their native layouts, and protocols."""
from __future__ import annotations

from typing import Sequence

from mer_utils.data.casme2 import read_casme2
from mer_utils.data.protocols import (
    OFFICIAL_MEGC2019_LIST,
    PROTOCOLS,
    MegcListEntry,
    Protocol,
    get_protocol,
    load_samples,
    read_megc_list,
)
from mer_utils.data.sample import DATASET_FOLDERS, DATASETS, Sample
from mer_utils.errors import DatasetError
from mer_utils.data.samm import read_samm
from mer_utils.data.smic import read_smic

__all__ = [
    "DATASETS",
    "DATASET_FOLDERS",
    "pick_sample",
    "OFFICIAL_MEGC2019_LIST",
    "PROTOCOLS",
    "MegcListEntry",
    "Protocol",
    "Sample",
    "get_protocol",
    "load_samples",
    "read_casme2",
    "read_megc_list",
    "read_samm",
    "read_smic",
    "samples_to_records",
    "summary_table",
]


def samples_to_records(samples: Sequence[Sample]) -> list[dict]:
    """JSON-ready records (no frame paths): dataset, subject, subject_id, clip, emotion, label,
    onset, apex, offset, apex_inferred, n_frames."""
    records = []
    for sample in samples:
        record = sample.to_dict()
        del record["frames"]
        records.append(record)
    return records


def summary_table(samples: Sequence[Sample], classes: Sequence[str] | None = None) -> str:
    """Counts per dataset and class (the label, or the emotion for unlabelled samples), with
    totals and the number of subjects per dataset and overall, as printable text.

    ``classes`` fixes the column order; by default the order of the protocol whose classes
    cover all the labels. Other columns follow sorted.
    """
    if not samples:
        return "no samples"
    import pandas as pd

    labelled = all(s.label is not None for s in samples)
    column = "label" if labelled else "emotion"
    if classes is None and labelled:
        labels = {s.label for s in samples}
        classes = next((p.classes for p in PROTOCOLS.values() if labels <= set(p.classes)), None)
    frame = pd.DataFrame(
        {
            "dataset": [s.dataset for s in samples],
            column: [s.label if labelled else s.emotion for s in samples],
            "subject": [f"{s.dataset}/{s.subject}" for s in samples],
        }
    )
    table = pd.crosstab(frame["dataset"], frame[column], margins=True, margins_name="total")
    present = [c for c in table.columns if c != "total"]
    ordered = [c for c in (classes or ()) if c in present]
    table = table[ordered + sorted(c for c in present if c not in ordered) + ["total"]]
    subjects = frame.groupby("dataset")["subject"].nunique()
    subjects["total"] = frame["subject"].nunique()
    table["subjects"] = subjects
    return table.to_string()


def pick_sample(samples: Sequence, clip: str = ""):
    """The sample whose key (``casme2/sub01/EP02_01f``) or clip name is ``clip``; "" gives the first."""
    if not samples:
        raise DatasetError("no samples to pick from")
    if not clip:
        return samples[0]
    for sample in samples:
        if clip in (sample.key, sample.clip):
            return sample
    shown = ", ".join(s.key for s in samples[:5])
    raise DatasetError(f"clip {clip!r} is not among the {len(samples)} samples (such as {shown})")
