"""The one record every part of the kit passes around: a micro-expression sample."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mer_utils.errors import DatasetError

DATASETS = ("casme2", "samm", "smic")
DATASET_FOLDERS = {"casme2": "CASME2", "samm": "SAMM", "smic": "SMIC"}  # folder of each under a data root
APEX_MODES = ("annotated", "middle", "spotted")  # load_samples(apex=...): where each sample's apex comes from


@dataclass(frozen=True)
class Sample:
    """One annotated micro-expression clip.

    Frame numbers are the dataset's own (CASME II ``img46.jpg`` is frame 46, SAMM
    ``006_05562.jpg`` is frame 5562, SMIC ``image000123.bmp`` is frame 123).
    """

    dataset: str  # "casme2" | "samm" | "smic"
    subject: str  # as on disk: "sub01", "006", "s1"
    clip: str  # as on disk: "EP02_01f", "006_1_2", "s1_ne_01"
    emotion: str  # as annotated (stripped): "happiness", "Anger", "negative"
    onset: int
    apex: int
    offset: int
    apex_inferred: bool  # True when the apex was missing and set to the middle frame
    frames: tuple[Path, ...]  # frame image paths in numeric frame order
    frame_numbers: tuple[int, ...]  # the dataset's frame number of each path
    label: str | None = None  # class name under the protocol (None before a protocol applies)
    subject_id: str = ""  # LOSO group: the subject, or "casme2/sub01" under megc2019
    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.subject_id:
            object.__setattr__(self, "subject_id", self.subject)

    @property
    def key(self) -> str:
        """Unique id of the clip across datasets: ``casme2/sub01/EP02_01f``."""
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def frame_path(self, number: int) -> Path:
        """Path of the frame with the dataset's frame number ``number``."""
        try:
            return self.frames[self.frame_numbers.index(number)]
        except ValueError:
            folder = self.frames[0].parent if self.frames else "?"
            raise DatasetError(
                f"{self.key}: frame {number} has no file in {folder} "
                f"(frames on disk: {self.frame_numbers[0] if self.frame_numbers else '-'}"
                f"..{self.frame_numbers[-1] if self.frame_numbers else '-'})"
            ) from None

    def replace(self, **changes) -> "Sample":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-friendly view (frame paths as strings)."""
        return {
            "dataset": self.dataset,
            "subject": self.subject,
            "subject_id": self.subject_id,
            "clip": self.clip,
            "emotion": self.emotion,
            "label": self.label,
            "onset": self.onset,
            "apex": self.apex,
            "offset": self.offset,
            "apex_inferred": self.apex_inferred,
            "n_frames": self.n_frames,
            "frames": [str(p) for p in self.frames],
        }
