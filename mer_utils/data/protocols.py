"""Evaluation protocols: which samples, which classes, which LOSO groups (docs/method.md section 3)."""
from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from mer_utils.data._common import MAX_LISTED_PROBLEMS, listed
from mer_utils.data.casme2 import read_casme2
from mer_utils.data.sample import APEX_MODES, DATASET_FOLDERS, DATASETS, Sample
from mer_utils.data.samm import read_samm
from mer_utils.data.smic import read_smic
from mer_utils.errors import DataWarning, DatasetError
from mer_utils.paths import OFFICIAL_MEGC2019_LIST, data_root_dir  # noqa: F401  (list re-exported by mer_utils.data)



@dataclass(frozen=True)
class Protocol:
    """A protocol: its classes (label order), datasets and how emotions map to classes.

    ``emotion_to_class[dataset][emotion.lower()]`` gives the class; emotions absent from
    the mapping are outside the protocol. ``prefixed_subject_ids``: LOSO groups are
    ``dataset/subject`` (subject numbers repeat across datasets) instead of ``subject``.
    """

    name: str
    classes: tuple[str, ...]
    datasets: tuple[str, ...]
    description: str
    emotion_to_class: Mapping[str, Mapping[str, str]] = field(default_factory=dict, compare=False)
    prefixed_subject_ids: bool = False

    def class_of(self, sample: Sample) -> str | None:
        """The sample's class under the emotion mapping, or None when the protocol excludes it."""
        return self.emotion_to_class.get(sample.dataset, {}).get(sample.emotion.strip().lower())

    def subject_id_of(self, sample: Sample) -> str:
        return f"{sample.dataset}/{sample.subject}" if self.prefixed_subject_ids else sample.subject


_CASME2_FIVE = ("others", "disgust", "happiness", "repression", "surprise")
PROTOCOLS: dict[str, Protocol] = {
    "casme2-5class": Protocol(
        name="casme2-5class",
        classes=_CASME2_FIVE,
        datasets=("casme2",),
        description="CASME II, five classes (others, disgust, happiness, repression, surprise), "
        "LOSO over its subjects; Accuracy, UF1, UAR.",
        emotion_to_class={"casme2": {emotion: emotion for emotion in _CASME2_FIVE}},
    ),
    "megc2019": Protocol(
        name="megc2019",
        classes=("negative", "positive", "surprise"),
        datasets=DATASETS,
        description="MEGC2019 composite: CASME II + SAMM + SMIC-HS in three classes "
        "(negative, positive, surprise), LOSO over all subjects (ids dataset/subject); "
        "UF1 and UAR overall and per dataset. The official list has 442 samples.",
        emotion_to_class={
            "casme2": {"disgust": "negative", "repression": "negative",
                       "happiness": "positive", "surprise": "surprise"},
            "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative",
                     "fear": "negative", "sadness": "negative",
                     "happiness": "positive", "surprise": "surprise"},
            "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
        },
        prefixed_subject_ids=True,
    ),
}

# Every emotion each dataset's annotation uses (its sheet's Estimated Emotion; SMIC's class
# folders), compared without case. A clip with another value (a typo) is left out with a
# warning naming it, where it would otherwise drop out like an emotion the protocol excludes.
DATASET_EMOTIONS = {
    "casme2": ("others", "disgust", "happiness", "repression", "surprise", "sadness", "fear"),
    "samm": ("anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise", "other"),
    "smic": ("negative", "positive", "surprise"),
}


def warn_unknown_emotions(samples: Iterable[Sample]) -> None:
    """Warn, in one line, about clips whose emotion is none of their dataset's
    (DATASET_EMOTIONS), naming each (up to MAX_LISTED_PROBLEMS) with its annotation row."""
    unknown = [s for s in samples if s.emotion.strip().lower() not in DATASET_EMOTIONS.get(s.dataset, ())]
    if not unknown:
        return
    shown = listed([f"{s.key} ({s.emotion!r}, {s.extra.get('annotation', s.dataset)})" for s in unknown])
    known = "; ".join(f"{d}: {', '.join(e)}" for d, e in DATASET_EMOTIONS.items() if any(s.dataset == d for s in unknown))
    warnings.warn(f"{len(unknown)} clip(s) left out: their emotion is not one the dataset uses ({known}): "
                  f"{shown}", DataWarning, stacklevel=3)


# ----------------------------------------------------------------------------- MEGC2019 list

MEGC_LABELS = PROTOCOLS["megc2019"].classes  # label index 0, 1, 2 in the official list
_MEGC_COLUMNS = ("dataset", "subject", "clip", "label")
_DATASET_ALIASES = {"casme2": "casme2", "casmeii": "casme2", "samm": "samm", "smic": "smic", "smichs": "smic"}


@dataclass(frozen=True)
class MegcListEntry:
    """One sample of a MEGC2019 list, names already in the disk spelling."""

    dataset: str
    subject: str
    clip: str
    label: str  # class name (negative, positive, surprise)
    line: int  # line number in the list file

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.clip}"


def disk_names(dataset: str, subject: str, clip: str) -> tuple[str, str]:
    """(subject, clip) as on disk: SAMM ``6`` -> ``006``, SMIC ``s01``/``s01_ne_01`` -> ``s1``/``s1_ne_01``,
    CASME II ``1`` or ``sub1`` -> ``sub01``. Raises ValueError for a subject that is not a number."""
    digits = re.sub(r"^(sub|s)", "", subject, flags=re.IGNORECASE)
    if not digits.isdigit():
        raise ValueError(f"subject {subject!r} is not a {dataset} subject")
    number = int(digits)
    if dataset == "casme2":
        return f"sub{number:02d}", clip
    if dataset == "samm":
        return f"{number:03d}", re.sub(r"^0*(\d+)_", lambda m: f"{int(m.group(1)):03d}_", clip)
    return f"s{number}", re.sub(r"^s0*(\d+)_", lambda m: f"s{int(m.group(1))}_", clip, flags=re.IGNORECASE)


def read_megc_list(path: str | Path) -> list[MegcListEntry]:
    """Read a MEGC2019 sample list: ``dataset,subject,clip,label`` rows, header optional.

    Accepts the official ground-truth CSV (no header, empty rows, SAMM subjects unpadded,
    SMIC ``s01``) and the shipped ``megc2019_composite.csv`` (with a header). Names are
    normalised to the disk spelling (:func:`disk_names`); labels 0, 1, 2 become negative,
    positive, surprise. A bad row or a repeated sample raises DatasetError naming the file
    and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise DatasetError(f"cannot read MEGC2019 list {path}: {error}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"MEGC2019 list {path} is not UTF-8 text: save it as UTF-8 CSV "
                           "(the official list is plain ASCII)") from None
    entries: list[MegcListEntry] = []
    first_line: dict[str, int] = {}
    header_seen = False
    for line_number, fields in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        where = f"{path} line {line_number}"
        if not entries and not header_seen and [f.lower() for f in fields] == list(_MEGC_COLUMNS):
            header_seen = True
            continue
        if len(fields) != 4:
            raise DatasetError(f"{where}: expected 4 fields dataset,subject,clip,label, found {len(fields)}: {fields}")
        raw_dataset, subject, clip, label = fields
        dataset = _DATASET_ALIASES.get(re.sub(r"[^a-z0-9]", "", raw_dataset.lower()))
        if dataset is None:
            raise DatasetError(f"{where}: unknown dataset {raw_dataset!r} (expected one of {', '.join(DATASETS)})")
        if label not in ("0", "1", "2"):
            raise DatasetError(f"{where}: label {label!r} is not 0, 1 or 2 ({', '.join(MEGC_LABELS)})")
        if not clip:
            raise DatasetError(f"{where}: clip is blank")
        try:
            subject, clip = disk_names(dataset, subject, clip)
        except ValueError as error:
            raise DatasetError(f"{where}: {error}") from None
        entry = MegcListEntry(dataset, subject, clip, MEGC_LABELS[int(label)], line_number)
        if entry.key in first_line:
            raise DatasetError(f"{where}: {entry.key} is listed again (first at line {first_line[entry.key]})")
        first_line[entry.key] = line_number
        entries.append(entry)
    if not entries:
        raise DatasetError(f"MEGC2019 list {path} holds no samples")
    return entries


# ----------------------------------------------------------------------------- loading


def get_protocol(protocol: str | Protocol) -> Protocol:
    """A Protocol by name (or the Protocol itself); DatasetError listing the known names."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise DatasetError(f"unknown protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def load_samples(
    root: str | Path,
    protocol: str | Protocol,
    megc_list: str | Path | Sequence[MegcListEntry] | None = None,
    casme2_variant: str = "auto",
    apex: str = "annotated",
    face_crop: str = "dlib",
) -> list[Sample]:
    """The protocol's samples from ``root/CASME2``, ``root/SAMM``, ``root/SMIC``, sorted by (subject_id, clip).

    Each sample gets its class name as ``label`` and its LOSO group as ``subject_id``.
    megc2019 with ``megc_list`` (a path such as OFFICIAL_MEGC2019_LIST, or parsed entries):
    exactly the listed samples with the listed labels; every listed dataset and sample must
    be on disk. megc2019 without a list: the datasets present, classes from the emotion
    mapping, and a warning that this is not the official list.

    ``apex`` (APEX_MODES): "annotated" keeps the annotated apex (SMIC-HS, which has none,
    gets the middle frame, as the paper does); "middle" sets every apex to the middle frame;
    "spotted" spots every apex on the aligned frames (``mer_utils.spotting``; ``face_crop``
    as in preprocessing). Both set ``apex_inferred`` and keep the annotation in
    ``extra["annotated_apex"]``.
    """
    if apex not in APEX_MODES:
        raise DatasetError(f"apex {apex!r} is not one of {', '.join(APEX_MODES)}")
    root = data_root_dir(root)
    proto = get_protocol(protocol)
    if megc_list is not None and proto.name != "megc2019":
        raise DatasetError(f"a MEGC2019 sample list only applies to protocol megc2019, not {proto.name!r}")

    if megc_list is None:
        datasets = [d for d in proto.datasets if (root / DATASET_FOLDERS[d]).is_dir()]
        if proto.name == "megc2019":
            if not datasets:
                folders = ", ".join(DATASET_FOLDERS[d] for d in proto.datasets)
                raise DatasetError(f"{root}: none of the dataset folders {folders} is present")
            warnings.warn(
                f"megc2019 without a sample list: the set comes from the emotion mapping "
                f"(docs/method.md section 3) over {', '.join(datasets)} and is not the official "
                f"MEGC2019 list; for the official 442 samples pass the shipped list (--megc-list official, "
                f"or megc_list=OFFICIAL_MEGC2019_LIST)",
                DataWarning,
                stacklevel=2,
            )
        else:
            datasets = list(proto.datasets)
        samples = _read_datasets(root, datasets, casme2_variant)
        warn_unknown_emotions(samples)
        chosen = [
            s.replace(label=label, subject_id=proto.subject_id_of(s))
            for s in samples
            if (label := proto.class_of(s)) is not None
        ]
        for dataset in datasets:  # a dataset present but contributing nothing would drop out silently
            if not any(s.dataset == dataset for s in chosen):
                read = sum(s.dataset == dataset for s in samples)
                raise DatasetError(
                    f"{root / DATASET_FOLDERS[dataset]}: none of its {read} clips has an emotion of protocol "
                    f"{proto.name} ({', '.join(sorted(proto.emotion_to_class.get(dataset, {})))}): no {dataset} sample")
    else:
        entries = list(megc_list) if not isinstance(megc_list, (str, Path)) else read_megc_list(megc_list)
        source = megc_list if isinstance(megc_list, (str, Path)) else "the MEGC2019 list"
        datasets = [d for d in proto.datasets if any(e.dataset == d for e in entries)]
        left_out: dict[str, str] = {}
        samples = _read_datasets(root, datasets, casme2_variant, left_out)
        chosen = _listed_samples(entries, samples, proto, root, source, left_out)
    if not chosen:
        raise DatasetError(f"protocol {proto.name} on {root}: no sample")
    chosen = sorted(chosen, key=lambda s: (s.subject_id, s.clip))
    if apex != "annotated":
        from mer_utils.spotting import with_apex

        chosen = with_apex(chosen, apex, face_crop=face_crop)
    return chosen


def _read_datasets(root: Path, datasets: Iterable[str], casme2_variant: str,
                   left_out: dict[str, str] | None = None) -> list[Sample]:
    """The samples of ``datasets`` under ``root``; clips a reader left out with a warning
    (SMIC-HS folders without frames) go into ``left_out`` (key -> why) when given."""
    readers = {"casme2": partial(read_casme2, variant=casme2_variant), "samm": read_samm,
               "smic": partial(read_smic, left_out=left_out)}
    samples: list[Sample] = []
    for dataset in datasets:
        folder = root / DATASET_FOLDERS[dataset]
        if not folder.is_dir():
            raise DatasetError(f"{root}: dataset folder {DATASET_FOLDERS[dataset]}/ is missing ({dataset} is needed)")
        samples.extend(readers[dataset](folder))
    return samples


def _listed_samples(
    entries: Sequence[MegcListEntry], samples: list[Sample], proto: Protocol, root: Path, source,
    left_out: Mapping[str, str] | None = None,
) -> list[Sample]:
    """The listed samples with the list's labels. A listed clip that is not on disk is an
    error naming it; one the reader left out with a warning (``left_out``: a folder without
    frames) is left out of the set too, with a DataWarning saying how many of the list's
    samples remain."""
    by_key = {s.key: s for s in samples}
    left_out = left_out or {}
    dropped = [e for e in entries if e.key not in by_key and e.key in left_out]
    missing = [e for e in entries if e.key not in by_key and e.key not in left_out]
    if dropped and not missing:
        shown = listed([f"{e.key} (line {e.line}): {left_out[e.key]}" for e in dropped])
        warnings.warn(f"{len(dropped)} sample(s) listed in {source} left out, so the set holds "
                      f"{len(entries) - len(dropped)} of its {len(entries)}: {shown}", DataWarning, stacklevel=3)
        entries = [e for e in entries if e.key in by_key]
    if missing:
        shown = ", ".join(f"{e.key} (line {e.line})" for e in missing[:MAX_LISTED_PROBLEMS])
        more = f" and {len(missing) - MAX_LISTED_PROBLEMS} more" if len(missing) > MAX_LISTED_PROBLEMS else ""
        raise DatasetError(f"{len(missing)} sample(s) listed in {source} are missing under {root}: {shown}{more}")
    return [by_key[e.key].replace(label=e.label, subject_id=proto.subject_id_of(by_key[e.key])) for e in entries]
