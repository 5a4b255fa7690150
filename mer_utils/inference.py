"""Using a trained model on new recordings (docs/predict.md).

- ``train_protocol``: CropNet trained on every sample of a protocol (no held-out subject,
  the fixed number of epochs) and saved as a self-describing model folder: ``model.json``
  (the card: classes, protocol, preprocessing, backbone, training settings and data, kit
  version, date) and ``model.safetensors`` (the weights).
- ``load_model``: that folder back, refused when written by another kit version or
  incomplete.
- ``read_clip``: a folder of numbered frame images (any of the datasets' file-name styles)
  or a video file (OpenCV), as frame paths and frame numbers.
- ``predict_clip``: one clip preprocessed exactly as in training (window eq. 1-2, key
  frames eq. 3-4, face alignment on the start frame, the model's method), the apex spotted
  when not given; ``predict_protocol``: every sample of a data root, as a predictions table.
- ``tile_influence``: how much blanking each CGPO image z0..z9 moves the predicted class's
  probability.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

import mer_utils
from mer_utils.data.sample import Sample
from mer_utils.errors import ConfigError, DatasetError, MerError, PreprocessError, check_int
from mer_utils.paths import repo_relative

if TYPE_CHECKING:
    from mer_utils.config import ExperimentConfig

CARD_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FORMAT = "mer-residual model"
CARD_FORMAT_VERSION = 1
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")
TRUNCATED_FRACTION = 0.9  # a video decoding fewer frames than this share of its header's count is refused
CLIP_DATASET = "clip"  # Sample.dataset of a clip given by path (not from a dataset folder)


# --------------------------------------------------------------------------- the model folder


@dataclass
class LoadedModel:
    """A model folder in memory: its ``card`` (model.json), the CropNet in eval mode on CPU,
    and the ``TrainConfig`` that sizes its input."""

    folder: Path
    card: dict
    model: object  # CropNet
    config: object  # TrainConfig

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card["classes"])

    @property
    def preprocessing(self) -> dict:
        """method, n_key, face_crop, size (the cached images' side) as in training."""
        return dict(self.card["preprocessing"])


def _training_data(root: Path, samples: Sequence[Sample]) -> dict:
    from mer_utils.preprocess import clip_window
    from mer_utils.provenance import data_description, is_synthetic

    spans = [end - start for start, end in (clip_window(s.onset, s.apex, s.offset) for s in samples)]
    return {
        "root": str(root),
        "description": data_description(root),
        "synthetic": is_synthetic(root),
        "n_samples": len(samples),
        "n_subjects": len({s.subject_id for s in samples}),
        "datasets": dict(sorted(Counter(s.dataset for s in samples).items())),
        "class_counts": dict(sorted(Counter(s.label for s in samples).items())),
        "window_frames": [min(spans), max(spans)] if spans else [],  # end - start of the clip windows (eq. 1-2)
    }


def train_protocol(config: ExperimentConfig, out_dir: str | Path, *, apex: str = "annotated",
                   workers: int | None = 1, max_threads: int | None = None, progress: bool = True,
                   overwrite: bool = False) -> Path:
    """Train CropNet on every sample of ``config.protocol`` under ``config.root`` and write the
    model folder ``out_dir`` (returned). ``config`` is the LOSO runner's configuration
    (``config.ExperimentConfig``: settings left None take its defaults, i.e.
    ``train.TrainConfig``'s), so a model is trained exactly as an experiment's folds are;
    preprocessing goes through the shared cache. ``apex``: how each clip's apex is taken
    (``data.load_samples``); ``workers``: preprocessing processes; ``max_threads``: torch CPU
    threads; ``overwrite``: replace a model folder already at ``out_dir``."""
    from mer_utils.data import load_samples
    from mer_utils.files import atomic_write_bytes, atomic_write_text
    from mer_utils.preprocess import PREPROCESS_VERSION, load_image, preprocess_samples
    from mer_utils.train import processor_name, train_model

    started = time.perf_counter()
    out_dir = Path(out_dir)
    if config.method == "lbptop":
        raise ConfigError("mer train exports CropNet models: method lbptop (the SVM baseline) cannot be exported; "
                          "use ars, rrs, farneback or tvl1")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"model folder {out_dir} is a file, not a folder: choose another --out")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):  # found before training, not after
        raise ConfigError(f"model folder {out_dir} cannot be written: {existing} is "
                          f"{'a file' if not existing.is_dir() else 'not writable'}; choose another --out")
    if (out_dir / CARD_FILE).exists() and not overwrite:
        raise ConfigError(f"{out_dir} already holds a model ({CARD_FILE}); choose another folder, or replace it "
                          "(mer train --overwrite; overwrite=True)")
    if (out_dir / WEIGHTS_FILE).exists() and not (out_dir / CARD_FILE).exists():
        raise ConfigError(f"{out_dir / WEIGHTS_FILE} exists without a model card ({CARD_FILE}), so it was not "
                          "written by mer train: move it or choose another folder")
    if max_threads is not None:
        check_int("threads", max_threads)
    config = config.resolved()
    samples = load_samples(config.root, config.protocol, megc_list=config.megc_list, apex=apex,
                           face_crop=config.face_crop)
    if not samples:
        raise DatasetError(f"{config.root}: protocol {config.protocol} has no samples to train on")
    result = preprocess_samples(samples, method=config.method, cache_dir=config.cache_dir, n_key=config.n_key,
                                face_crop=config.face_crop, size=config.preprocess_size, workers=workers,
                                progress=progress)
    images = {key: load_image(path) for key, path in result.paths.items()}
    train_config = config.train_config(max_threads=max_threads, progress=progress)
    fitted = train_model(samples, train_config, images, desc=f"train {config.protocol}")

    weights = _weights_bytes(fitted.model)
    settings = dataclasses.asdict(train_config)
    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_FORMAT_VERSION,
        "kit_version": mer_utils.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(fitted.classes),
        "protocol": config.protocol,
        "megc_list": config.megc_list,
        "apex": apex,
        "preprocessing": {"method": config.method, "n_key": config.n_key, "face_crop": config.face_crop,
                          "size": config.preprocess_size, "preprocess_version": PREPROCESS_VERSION},
        "model": {"architecture": "CropNet", "backbone": train_config.backbone, "cgpo": train_config.cgpo,
                  "image_size": train_config.image_size, "grid": train_config.grid, "alpha": train_config.alpha,
                  "head_channels": train_config.head_channels, "embed_dim": train_config.embed_dim,
                  "ensemble": train_config.ensemble,
                  "pretrained_weights": config.pretrained_weights, "pretrained": fitted.model.pretrained},
        "training": {**{k: settings[k] for k in ("epochs", "batch_size", "lr", "fc_lr", "weight_decay",
                                                 "label_smoothing", "schedule", "augmentation", "seed",
                                                 "recalibrate_bn")},
                     "device": fitted.device.type,
                     "precision": fitted.precision,
                     "processor": processor_name(fitted.device),
                     "epoch_losses": [round(float(x), 6) for x in fitted.epoch_losses],
                     **({"member_epoch_losses": [[round(x, 6) for x in losses] for losses in fitted.member_losses]}
                        if fitted.member_losses else {}),
                     "wall_time_s": round(time.perf_counter() - started, 1)},
        "training_data": _training_data(Path(config.root), samples),
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest()},
    }
    atomic_write_bytes(out_dir / WEIGHTS_FILE, weights)
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=1) + "\n")
    return out_dir


def _weights_bytes(model) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={"format": CARD_FORMAT, "kit_version": mer_utils.__version__})


def load_model(folder: str | Path) -> LoadedModel:
    """The model folder written by ``train_protocol``; ConfigError naming the folder when it
    is missing, incomplete, not a model of this kit, from another kit version, or when its
    weights do not match its card."""
    from safetensors.torch import load

    from mer_utils.train import TrainConfig, build_model

    folder = Path(folder)
    if folder.is_file():
        raise ConfigError(f"--model {folder} is a file: give the model folder that holds {CARD_FILE} and {WEIGHTS_FILE}"
                          + (f" ({folder.parent})" if folder.name in (CARD_FILE, WEIGHTS_FILE) else ""))
    if not folder.is_dir():
        raise ConfigError(f"model folder {folder} does not exist (write one with `mer train ... --out {folder}`)")
    missing = [name for name in (CARD_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"model folder {folder} is incomplete: missing {', '.join(missing)} "
                          f"(expected {CARD_FILE} and {WEIGHTS_FILE})")
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{folder / CARD_FILE} is not readable JSON: {err}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ConfigError(f"{folder / CARD_FILE} is not a mer-residual model card (no \"format\": \"{CARD_FORMAT}\")")
    if card.get("kit_version") != mer_utils.__version__:
        raise ConfigError(f"model folder {folder} was written by mer-residual {card.get('kit_version')}, this is "
                          f"{mer_utils.__version__}: its preprocessing or model may differ; retrain it with `mer train`")
    try:
        spec, preprocessing, classes = card["model"], card["preprocessing"], tuple(card["classes"])
        _check_card_types(spec, preprocessing, classes)
        # cards written before the ensemble setting hold one network
        config = TrainConfig(image_size=spec["image_size"], cgpo=spec["cgpo"], grid=spec["grid"], alpha=spec["alpha"],
                             backbone=spec["backbone"], head_channels=spec["head_channels"], embed_dim=spec["embed_dim"],
                             ensemble=spec.get("ensemble", 1), classes=classes, device="cpu", progress=False)
        for name in ("method", "n_key", "face_crop", "size"):
            preprocessing[name]
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{folder / CARD_FILE} lacks the field {err} of a model card") from None
    except ConfigError as err:  # a value TrainConfig refuses (e.g. model.ensemble 0)
        raise ConfigError(f"{folder / CARD_FILE}: {err}") from None
    data = (folder / WEIGHTS_FILE).read_bytes()
    expected = card.get("weights", {}).get("sha256") if isinstance(card.get("weights"), dict) else None
    if not expected:  # every card mer train writes has it; without it, edited classes would pass unnoticed
        raise ConfigError(f"{folder / CARD_FILE} lacks the field 'weights.sha256' of a model card (the checksum of "
                          f"{WEIGHTS_FILE}): retrain it with `mer train`")
    if hashlib.sha256(data).hexdigest() != expected:
        raise ConfigError(f"{folder / WEIGHTS_FILE} does not match the checksum in {CARD_FILE} (changed or truncated)")
    try:
        state = load(data)
    except Exception as err:  # safetensors raises its own error types
        raise ConfigError(f"{folder / WEIGHTS_FILE} is not a safetensors weights file: {err}") from None
    try:
        networks = [build_model(dataclasses.replace(config, pretrained_weights=None), len(classes))
                    for _ in range(config.ensemble)]
    except (TypeError, ValueError, MerError) as err:
        raise ConfigError(f"{folder / CARD_FILE}: its model settings do not build a CropNet ({err})") from None
    if len(networks) == 1:
        model = networks[0]
    else:
        from mer_utils.models.ensemble import SeedEnsemble

        model = SeedEnsemble(networks)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{folder / WEIGHTS_FILE} does not fit the model its card describes: {first}") from None
    model.pretrained = bool(spec.get("pretrained"))
    model.eval()
    return LoadedModel(folder, card, model, config)


def _check_card_types(spec: dict, preprocessing: dict, classes: tuple) -> None:
    """ConfigError (``load_model`` names the card) when a field has the wrong type: whole numbers, true/false,
    and at least two distinct class names."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    wrong = [f"model.{k} {spec[k]!r} (a whole number >= 1)" for k in ("image_size", "grid", "head_channels", "embed_dim")
             if not whole(spec[k])]
    wrong += [f"model.{k} {spec[k]!r} (true or false)" for k in ("cgpo",) if not isinstance(spec[k], bool)]
    wrong += [f"preprocessing.{k} {preprocessing[k]!r} (a whole number >= 1)" for k in ("n_key", "size")
              if not whole(preprocessing[k])]
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        wrong.append(f"classes {list(classes)!r} (at least two distinct names)")
    if wrong:
        raise ConfigError("; ".join(wrong))


def check_compatible(model: LoadedModel, protocol: str, method: str | None = None, n_key: int | None = None,
                     face_crop: str | None = None, size: int | None = None) -> None:
    """ConfigError naming both sides when the model's classes or preprocessing do not match
    the requested protocol (and the preprocessing settings given, None = the model's)."""
    from mer_utils.data import get_protocol

    wanted = get_protocol(protocol)
    if tuple(wanted.classes) != model.classes:
        raise ConfigError(f"model {model.folder} was trained on protocol {model.card.get('protocol')} with classes "
                          f"{', '.join(model.classes)}; protocol {wanted.name} has classes {', '.join(wanted.classes)}")
    own = model.preprocessing
    asked = {"method": method, "n_key": n_key, "face_crop": face_crop, "size": size}
    differing = {k: v for k, v in asked.items() if v is not None and v != own[k]}
    if differing:
        detail = "; ".join(f"{k} {own[k]!r} in the model, {v!r} requested" for k, v in differing.items())
        raise ConfigError(f"model {model.folder} was trained with other preprocessing than requested: {detail}")


# --------------------------------------------------------------------------- clips


@dataclass
class Clip:
    """A clip given by path: its frame files in order and their frame numbers (a video's
    frames are numbered from 0 and decoded into a temporary folder)."""

    path: Path
    frames: tuple[Path, ...]
    frame_numbers: tuple[int, ...]
    is_video: bool = False


@contextlib.contextmanager
def read_clip(path: str | Path) -> Iterator[Clip]:
    """The clip at ``path``: a folder of numbered images (``img46.jpg``, ``006_05562.jpg``,
    ``image000123.bmp``, ``frame_0001.png``, ...) or a video file (``VIDEO_EXTENSIONS``,
    through OpenCV, frames numbered from 0). A context manager: a video's decoded frames
    are removed on exit. Raises DatasetError / PreprocessError naming the clip."""
    from mer_utils.data._common import list_frames

    path = Path(path)
    if path.is_dir():
        try:
            frames, numbers = list_frames(path)
        except DatasetError as err:
            raise DatasetError(f"clip {path}: {err}") from None
        yield Clip(path, frames, numbers)
        return
    if not path.exists():
        raise DatasetError(f"clip {path} does not exist (expected a folder of frame images or a video file)")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise DatasetError(f"clip {path} is neither a folder of frame images nor a video file "
                           f"({', '.join(VIDEO_EXTENSIONS)})")
    with tempfile.TemporaryDirectory(prefix="mer_clip_") as folder:
        frames = decode_video(path, Path(folder))
        yield Clip(path, tuple(frames), tuple(range(len(frames))), is_video=True)


def decode_video(path: Path, folder: Path) -> list[Path]:
    """Every frame of the video ``path`` as lossless ``frame_<n>.bmp`` in ``folder`` (n from 0).
    PreprocessError naming the video when it cannot be opened, holds no frame, or decoding
    stops well before the frame count its header declares (a truncated or damaged file,
    which would otherwise pass as a shorter clip)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # quiet: a bad file is reported once, below
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        if not capture.isOpened():
            raise PreprocessError(f"clip {path}: OpenCV cannot open this video (unreadable or unknown codec)")
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # the header's count; an estimate in some containers
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            target = folder / f"frame_{len(frames):06d}.bmp"
            if not cv2.imwrite(str(target), frame):
                raise PreprocessError(f"clip {path}: cannot write decoded frame {target}")
            frames.append(target)
    finally:
        capture.release()
    if not frames:
        raise PreprocessError(f"clip {path}: no frame could be decoded (unreadable video or unknown codec)")
    if declared > 0 and len(frames) < TRUNCATED_FRACTION * declared:
        raise PreprocessError(f"clip {path}: decoding stopped after {len(frames)} of the {declared} frames its header "
                              "declares: the file looks truncated or damaged (re-export or re-copy it)")
    return frames


def write_video(frames: Sequence[str | Path], path: str | Path, fps: float = 30.0) -> Path:
    """Write frame image files as a video (the codec from the suffix: ``.avi`` lossless FFV1,
    ``.mp4``/``.mov`` MPEG-4 part 2, ``.mkv`` FFV1); for demos and tests of ``predict_clip``."""
    import cv2

    path = Path(path)
    codec = {".avi": "FFV1", ".mkv": "FFV1", ".mp4": "mp4v", ".mov": "mp4v"}.get(path.suffix.lower())
    if codec is None:
        raise ConfigError(f"write_video: suffix of {path} is not one of .avi, .mkv, .mp4, .mov")
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR) if frames else None
    if first is None:
        raise PreprocessError(f"write_video: cannot read the first frame {frames[0] if frames else '(none given)'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (first.shape[1], first.shape[0]))
    if not writer.isOpened():
        raise PreprocessError(f"write_video: OpenCV cannot write {codec} video {path}")
    try:
        for frame_path in frames:
            frame = cv2.imread(str(frame_path), cv2.IMREAD_COLOR)
            if frame is None or frame.shape != first.shape:
                raise PreprocessError(f"write_video: frame {frame_path} is unreadable or not {first.shape[1]}x{first.shape[0]}")
            writer.write(frame)
    finally:
        writer.release()
    return path


def clip_sample(clip: Clip, onset: int | None = None, apex: int | None = None, offset: int | None = None) -> Sample:
    """The Sample of a clip with the window checked: onset/offset default to the first/last
    frame; ``apex`` None is left to the caller (set here to the onset as a placeholder)."""
    name, numbers = clip.path, clip.frame_numbers
    if len(numbers) < 2:
        raise PreprocessError(f"clip {name}: has {len(numbers)} frame(s); at least 2 are needed (onset and a later frame)")
    onset = numbers[0] if onset is None else int(onset)
    offset = numbers[-1] if offset is None else int(offset)
    on_disk = set(numbers)
    for what, number in (("onset", onset), ("apex", apex), ("offset", offset)):
        if number is not None and number not in on_disk:
            where = ("has no file: the clip's frame numbers skip it" if numbers[0] < number < numbers[-1]
                     else "is outside the clip")
            raise PreprocessError(f"clip {name}: {what} frame {number} {where} (its frames are "
                                  f"{numbers[0]}..{numbers[-1]}, {len(numbers)} files)")
    if onset > offset:
        raise PreprocessError(f"clip {name}: onset {onset} is after offset {offset}")
    if apex is not None and not onset <= apex <= offset:
        raise PreprocessError(f"clip {name}: apex {apex} is outside the window onset {onset}..offset {offset}")
    if offset == onset:
        raise PreprocessError(f"clip {name}: onset and offset are both frame {onset}; the window needs 2 frames")
    return Sample(dataset=CLIP_DATASET, subject=clip.path.parent.name or "-", clip=clip.path.name, emotion="",
                  onset=onset, apex=onset if apex is None else int(apex), offset=offset, apex_inferred=apex is None,
                  frames=clip.frames, frame_numbers=clip.frame_numbers)


@dataclass
class ClipPrediction:
    """What ``predict_clip`` found: the class, each class's probability, the window, where
    the apex came from, the model that predicted it, and the pictures the notebook shows."""

    clip: str
    label: str
    probabilities: dict[str, float]
    onset: int
    apex: int
    offset: int
    apex_source: str  # "annotated" (given) or "spotted"
    image: np.ndarray = field(repr=False)  # the preprocessed (ARS, ...) image fed to CropNet
    curve: object = field(default=None, repr=False)  # spotting.SpottedApex when spotted
    key_frames: list[int] = field(default_factory=list)
    model: dict = field(default_factory=dict)  # model_identity(): folder, protocol, method, training data, weights

    def to_json(self) -> dict:
        return {"clip": self.clip, "label": self.label,
                "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
                "onset": self.onset, "apex": self.apex, "offset": self.offset, "apex_source": self.apex_source,
                "key_frames": list(self.key_frames), "model": dict(self.model)}


def model_identity(model: LoadedModel) -> dict:
    """Which model made a prediction, from its card: folder, protocol, method, what it was
    trained on (and whether that was synthetic) and its weights' checksum."""
    card = model.card
    data = card.get("training_data", {})
    return {"folder": str(model.folder), "protocol": card.get("protocol"), "method": model.preprocessing["method"],
            "trained_on": data.get("description"), "synthetic": data.get("synthetic"),
            "weights_sha256": card.get("weights", {}).get("sha256")}


def _consecutive(numbers: Sequence[int]) -> bool:
    return numbers[-1] - numbers[0] + 1 == len(numbers)


def _clip_text(message: str, clip: Clip, sample: Sample) -> str:
    """A message about a clip given by path, naming the path (not the Sample's key) and a
    video's frames by number (not the temporary files they were decoded to)."""
    message = message.replace(f"clip {sample.key}", f"clip {clip.path}").replace(sample.key, str(clip.path))
    if clip.is_video:
        decoded = r"(\()?" + re.escape(str(clip.frames[0].parent)) + r"/frame_0*(\d+)\.bmp(?(1)\))"  # "(path)" or path
        message = re.sub(decoded, lambda m: f"(video frame {int(m.group(2))})", message)
    return message


def _reissue(caught: Sequence[warnings.WarningMessage], clip: Clip, sample: Sample) -> None:
    """The preprocessing's warnings again, naming the clip's path; warnings that differ only in
    their numbers (one per frame) are given once, with how many more there were."""
    firsts: dict[str, tuple[str, type, int]] = {}
    for item in caught:
        text = _clip_text(str(item.message), clip, sample)
        shape = re.sub(r"\d+(\.\d+)?", "#", text)
        first = firsts.get(shape)
        firsts[shape] = (text, item.category, 1) if first is None else (first[0], first[1], first[2] + 1)
    for text, category, count in firsts.values():
        more = f" (and {count - 1} more like it)" if count > 1 else ""
        warnings.warn(text + more, category, stacklevel=3)


def predict_clip(model: LoadedModel, path: str | Path, onset: int | None = None, apex: int | None = None,
                 offset: int | None = None) -> ClipPrediction:
    """Class probabilities of the clip at ``path`` (``read_clip``): window onset..offset (the
    whole clip by default), apex as given or spotted (``spotting.spot_sample_apex``), then the
    model's preprocessing (eq. 1-4, face alignment, method) and CropNet.

    Refused (PreprocessError naming the clip) when the preprocessed image is one flat value
    (no movement between the window's frames: nothing to classify). Warns when the window
    (eq. 1-2) is shorter than its 10 frames (the clip ends first, key frames repeat), or more
    than twice as long as the longest of the model's training clips, whose key frames it
    spreads much further apart (give ``onset`` near the expression's start)."""
    from mer_utils.preprocess import MIN_WINDOW, preprocess_sample, sample_window
    from mer_utils.spotting import spot_sample_apex
    from mer_utils.train import predict_probs

    prep = model.preprocessing
    with read_clip(path) as clip:
        sample = clip_sample(clip, onset, apex, offset)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                spotted = None
                if apex is None:
                    spotted = spot_sample_apex(sample, face_crop=prep["face_crop"])  # as load_samples(apex="spotted")
                    sample = sample.replace(apex=spotted.apex)
                start, keys = sample_window(sample, prep["n_key"])
                image = preprocess_sample(sample, prep["method"], n_key=prep["n_key"], face_crop=prep["face_crop"],
                                          size=prep["size"])
            except MerError as err:
                message = _clip_text(str(err), clip, sample)
                if not clip.is_video and not _consecutive(clip.frame_numbers) and "has no file" in message:
                    numbers = clip.frame_numbers
                    message += (f"; the clip's frame numbers are not consecutive ({len(numbers)} files numbered "
                                f"{numbers[0]}..{numbers[-1]}): frames are read by number, so number them "
                                "one after another, or give the clip as a video")
                raise type(err)(message if str(clip.path) in message else f"clip {clip.path}: {message}") from None
        _reissue(caught, clip, sample)
    if image.min() == image.max():
        raise PreprocessError(f"clip {clip.path}: no movement between its frames {sample.onset}..{sample.offset} "
                              f"(the {prep['method'].upper()} image is one flat value): nothing to classify")
    end = keys[-1]  # the key frames end on the window's end (eq. 3-4)
    trained = model.card.get("training_data", {}).get("window_frames") or []
    if end - start < min([MIN_WINDOW, *trained[:1]]):  # shorter than eq. 2's window and every training clip's
        warnings.warn(f"clip {clip.path}: its window {start}..{end} is shorter than eq. 2's {MIN_WINDOW} frames "
                      f"(the clip ends first), so its key frames repeat ({', '.join(map(str, keys))}); a clip of "
                      "its onset and at least ten frames after it is read as in training", UserWarning, stacklevel=2)
    if trained and end - start > 2 * trained[-1]:
        gap = keys[1] - keys[0] if len(keys) > 1 else end - start
        warnings.warn(f"clip {clip.path}: its window {start}..{end} spans {end - start} frames, more than twice the "
                      f"longest training clip's {trained[-1]}, so its key frames lie {gap} frames apart; "
                      f"give --onset near the expression's start (the apex is frame {sample.apex})", UserWarning,
                      stacklevel=2)
    probs = predict_probs(model.model, [image], model.config)[0]
    classes = model.classes
    return ClipPrediction(clip=str(Path(path)), label=classes[int(np.argmax(probs))],
                          probabilities={c: float(p) for c, p in zip(classes, probs)},
                          onset=sample.onset, apex=sample.apex, offset=sample.offset,
                          apex_source="annotated" if apex is not None else "spotted",
                          image=image, curve=spotted, key_frames=list(keys), model=model_identity(model))


def format_prediction(prediction: ClipPrediction) -> str:
    """Printable: the class, then each class's probability, the window and the model."""
    lines = [f"{repo_relative(prediction.clip)}: {prediction.label}"]
    for name, p in sorted(prediction.probabilities.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<12} {p:.4f}")
    lines.append(f"  window: onset {prediction.onset}, apex {prediction.apex} ({prediction.apex_source}), "
                 f"offset {prediction.offset}")
    if prediction.model:
        lines.append("  " + model_text(prediction.model))
    return "\n".join(lines)


def model_text(identity: dict) -> str:
    """One line naming a model (``model_identity``) and what it was trained on; a model
    trained on synthetic data says it is a test of the pipeline."""
    text = (f"model: {repo_relative(identity['folder'])} ({identity['method']} + CropNet, {identity['protocol']}), "
            f"trained on {identity['trained_on']}")
    if identity.get("synthetic"):
        text += ": a test of the pipeline, not a model of real micro-expressions"
    return text


# --------------------------------------------------------------------------- a whole data root


def predict_protocol(model: LoadedModel, root: str | Path, protocol: str, megc_list: str | Path | None = None,
                     apex: str | None = None, cache_dir: str | Path | None = None, workers: int | None = 1,
                     method: str | None = None, n_key: int | None = None, face_crop: str | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """Predict every sample of ``protocol`` under ``root``: the kit's predictions table
    (dataset, subject, clip, true_label, pred_label, prob_<class>..., then apex), which
    ``evaluate.write_predictions`` writes and ``mer metrics`` scores. ``apex`` None: the
    model card's. Refused (ConfigError) when the model does not fit the protocol."""
    from mer_utils.data import load_samples
    from mer_utils.preprocess import load_image, preprocess_samples
    from mer_utils.train import predict_probs

    check_compatible(model, protocol, method, n_key, face_crop)
    prep = model.preprocessing
    root = Path(root).expanduser().resolve()
    cache_dir = Path(cache_dir) if cache_dir else root.parent / "interim" / "cache"
    samples = load_samples(root, protocol, megc_list=megc_list, apex=apex or model.card.get("apex", "annotated"),
                           face_crop=prep["face_crop"])
    if is_training_data(model, root):
        warnings.warn(f"{root} holds the data model {model.folder} was trained on "
                      f"({model.card['training_data']['description']}): its scores here are on training clips, "
                      "not held-out ones", UserWarning, stacklevel=2)
    result = preprocess_samples(samples, method=prep["method"], cache_dir=cache_dir, n_key=prep["n_key"],
                                face_crop=prep["face_crop"], size=prep["size"], workers=workers, progress=progress)
    probs = predict_probs(model.model, [load_image(result.paths[s.key]) for s in samples], model.config)
    classes = model.classes
    frame = pd.DataFrame({
        "dataset": [s.dataset for s in samples],
        "subject": [s.subject_id for s in samples],
        "clip": [s.clip for s in samples],
        "true_label": [s.label for s in samples],
        "pred_label": [classes[i] for i in probs.argmax(axis=1)] if len(samples) else [],
    })
    for index, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, index] if len(samples) else []
    frame["apex"] = [s.apex for s in samples]
    return frame


def is_training_data(model: LoadedModel, root: str | Path) -> bool:
    """Whether ``root`` is the data root the model was trained on: the same folder, or
    synthetic data of the same description (the same seed: a copy of it)."""
    from mer_utils.provenance import data_description, is_synthetic

    trained = model.card.get("training_data", {})
    root = Path(root).expanduser().resolve()
    if trained.get("root") and Path(trained["root"]).expanduser().resolve() == root:
        return True
    return bool(trained.get("synthetic")) and is_synthetic(root) and trained.get("description") == data_description(root)


# --------------------------------------------------------------------------- explanation


def tile_influence(model: LoadedModel, image: np.ndarray) -> pd.DataFrame:
    """For each CGPO image z0..z9 (z0 the down-sampled whole face, z1..z9 the tiles): the
    predicted class's probability with that image blanked (set to the normalised mean, i.e.
    0, before the backbone) and its drop from the unblanked probability. Rows in z order."""
    import torch

    from mer_utils.train import build_transform

    net = model.model
    transform = build_transform(model.config.image_size)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    with torch.inference_mode():
        views = net.views(transform(tensor)[None])
        full = torch.softmax(net.forward_views(views).float(), dim=1)[0]
        predicted = int(full.argmax())
        blanked = views.repeat(views.shape[1], 1, 1, 1, 1)
        for index in range(views.shape[1]):
            blanked[index, index] = 0.0
        probs = torch.softmax(net.forward_views(blanked).float(), dim=1)[:, predicted]
    names = [f"z{i}" for i in range(views.shape[1])]
    return pd.DataFrame({"image": names, "probability blanked": probs.numpy(),
                         "drop": float(full[predicted]) - probs.numpy()}).set_index("image")


# --------------------------------------------------------------------------- notebook 08 and benchmarks


def _augmentation(training: dict) -> str:
    """A card's training augmentation; cards written before the setting had three values
    record ``augment`` True (the paper's four) or False."""
    if "augmentation" in training:
        return training["augmentation"]
    return "paper" if training.get("augment", True) else "none"


def model_summary(model: LoadedModel) -> str:
    """The model in one line for a report's summary, from its card: samples, epochs, batch,
    learning rates, augmentation, input size, networks, weights, where it was trained."""
    from mer_utils.tables import device_text, ensemble_text, epochs_text
    from mer_utils.train import AUGMENTATION_TEXT

    card = model.card
    training = card["training"]
    networks = ensemble_text(card["model"].get("ensemble", 1), training["seed"])
    where = device_text([training])  # "on CUDA (bfloat16)"; cards older than "precision" give the device alone
    return (f"{card['training_data']['n_samples']} samples, {epochs_text(training['epochs'])} at "
            f"{card['model']['image_size']} px{networks}, batch {training['batch_size']}, {_rates(training)}, "
            f"{AUGMENTATION_TEXT[_augmentation(training)]}, "
            f"backbone {'pretrained' if card['model']['pretrained'] else 'from scratch'}"
            + (f", {where}" if where else ""))


def _rates(training: Mapping) -> str:
    """:func:`mer_utils.tables.rates_text` of a card's training record (older cards lack fc_lr)."""
    from mer_utils.tables import rates_text

    return rates_text(training["lr"], training.get("fc_lr"))


def card_table(model: LoadedModel) -> pd.DataFrame:
    """The model card as a two-column table (field, value) for a report."""
    from mer_utils.tables import device_text, ensemble_text
    from mer_utils.train import AUGMENTATION_TEXT

    card = model.card
    rows = {
        "classes": ", ".join(card["classes"]),
        "protocol": card["protocol"],
        "apex": card.get("apex", "annotated"),
        "preprocessing": ", ".join(f"{k} {v}" for k, v in card["preprocessing"].items()),
        "backbone": f"{card['model']['backbone']} ({'ImageNet ' + str(card['model']['pretrained_weights']) if card['model']['pretrained'] else 'from scratch'})",
        "CropNet input": f"{card['model']['image_size']} px, CGPO {'on' if card['model']['cgpo'] else 'off'}"
                         + ensemble_text(card["model"].get("ensemble", 1), card["training"]["seed"]),
        "training": f"{card['training']['epochs']} epochs, batch {card['training']['batch_size']}, {_rates(card['training'])}, "
                    f"{AUGMENTATION_TEXT[_augmentation(card['training'])]}, seed {card['training']['seed']}, "
                    f"final loss {card['training']['epoch_losses'][-1]:.4f}, {device_text([card['training']])}",
        "testing": "BatchNorm statistics of the un-augmented training images"
                   if card["training"].get("recalibrate_bn", False) else "BatchNorm running averages (as the paper)",
        "training data": f"{card['training_data']['n_samples']} samples of {card['training_data']['n_subjects']} subjects, "
                         f"{card['training_data']['description']}",
        "kit version, created": f"{card['kit_version']}, {card['created']}",
    }
    return pd.DataFrame({"value": rows}).rename_axis("field")


def unseen_synthetic(out: str | Path, protocol: str, seed: int = 1, subjects: int | None = None) -> Path:
    """A synthetic set with another seed (new faces) holding the protocol's datasets, written
    once into ``out`` (reused when already there with the same parameters)."""
    from mer_utils.data import get_protocol
    from mer_utils.synth import make_synthetic

    make_synthetic(out, datasets=get_protocol(protocol).datasets, seed=seed, subjects=subjects, workers=1,
                   progress=False)
    return Path(out)


def predict_videos(model: LoadedModel, samples: Sequence[Sample], folder: str | Path, suffix: str = ".avi",
                   fps: float = 30.0) -> pd.DataFrame:
    """Each sample's frames from onset to offset written as one video in ``folder`` and
    predicted with ``predict_clip`` (whole video as the window, apex spotted): the kit's
    predictions table, plus the spotted, annotated (NaN where none) and middle-frame apex in
    the dataset's frame numbers, and the video's path."""
    from mer_utils.preprocess import infer_apex

    folder = Path(folder)
    rows = []
    for sample in samples:
        numbers = [n for n in sample.frame_numbers if sample.onset <= n <= sample.offset]
        video = write_video([sample.frame_path(n) for n in numbers], folder / f"{sample.key.replace('/', '_')}{suffix}",
                            fps=fps)
        prediction = predict_clip(model, video)
        rows.append({"dataset": sample.dataset, "subject": sample.subject_id, "clip": sample.clip,
                     "true_label": sample.label, "pred_label": prediction.label,
                     **{f"prob_{c}": prediction.probabilities[c] for c in model.classes},
                     "apex_spotted": numbers[prediction.apex],
                     "apex_annotated": float("nan") if sample.apex_inferred else float(sample.apex),
                     "apex_middle": infer_apex(sample.onset, sample.offset), "video": str(video)})
    return pd.DataFrame(rows)


def apex_errors(table: pd.DataFrame) -> dict:
    """Mean absolute apex error in frames of ``predict_videos``'s table against the annotated
    apex, for the spotted apex and for the middle-frame guess, over the clips whose apex was
    annotated: ``{"clips": n, "spotted": mae, "middle": mae}``."""
    annotated = table.dropna(subset=["apex_annotated"])
    return {"clips": len(annotated),
            "spotted": float((annotated["apex_spotted"] - annotated["apex_annotated"]).abs().mean()),
            "middle": float((annotated["apex_middle"] - annotated["apex_annotated"]).abs().mean())}
