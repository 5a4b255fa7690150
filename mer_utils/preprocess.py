"""Preprocessing (paper 3.1; docs/method.md section 1): clip window, key frames, aligned face
crops, residual images (ARS, RRS) and the optical-flow baselines, computed in parallel and
cached on disk as PNG.

Every method has the signature ``fn(start, keys, *, name=None) -> (H, W, 3) uint8``: the
aligned start crop, then the key-frame crops in order (flows use the start and the last
key frame, which is the window's end). ``METHODS`` maps the ablation's names to them.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import time
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image  # torchvision's dependency

from mer_utils.data.sample import Sample
from mer_utils.files import atomic_write_bytes, exit_with_parent, file_digest
from mer_utils.errors import ConfigError, PreprocessError, check_int
from mer_utils.face import DETECT_WIDTH, FACE_CROP, FOREHEAD, MARGIN, MIN_SIZE, load_face_models, make_aligner

# Bump when any computation below changes its output: every cached image becomes a miss.
PREPROCESS_VERSION = 1
N_KEY = 5  # key frames per clip, the paper's N_key (Figure 5 varies it)
PREPROCESS_SIZE = 320  # side of the aligned crops and cached images (the paper's 320)
MIN_WINDOW = 10  # eq. 2: windows whose apex is closer than this to the onset run to onset + 10


# --- window and key frames (eq. 1-4) ---------------------------------------------------


def infer_apex(onset: int, offset: int) -> int:
    """Middle frame ``onset + (offset - onset) // 2``, used where the apex is missing
    (SMIC has none; docs/method.md 1.1)."""
    return onset + (offset - onset) // 2


def clip_window(onset: int, apex: int, offset: int) -> tuple[int, int]:
    """(start, end) frame numbers of the clip, eq. 1 and 2.

    start = onset (eq. 1). end = min(onset + 10, offset) if apex - onset < 10, else
    min(apex, offset) (eq. 2; the text lost the operator, docs/method.md reads it as ``<``).
    """
    if offset < onset:
        raise PreprocessError(f"onset {onset} is after offset {offset}: no clip window")
    start = onset
    if apex - onset < MIN_WINDOW:
        end = min(onset + MIN_WINDOW, offset)
    else:
        end = min(apex, offset)
    return start, end


def key_frames(start: int, end: int, n_key: int = N_KEY) -> list[int]:
    """Key frame numbers F, eq. 3 and 4 as docs/method.md 1.3 reads them.

    gap = ceil((end - start) / n_key); F = [min(start + k * gap, end) for k = 1..n_key], so F
    ends on ``end``. (The printed eq. 3 has ``n_key + 1`` below, which contradicts F's last
    element ``end``; we follow the set.) Duplicates from clamping are kept, so len(F) is
    always n_key; a window with end == start gives n_key copies of start.
    """
    if n_key < 1:
        raise ConfigError(f"n_key must be >= 1, got {n_key}")
    if end < start:
        raise PreprocessError(f"key frames: end {end} is before start {start}")
    gap = math.ceil((end - start) / n_key)
    return [min(start + k * gap, end) for k in range(1, n_key + 1)]


def sample_window(sample: Sample, n_key: int = N_KEY) -> tuple[int, list[int]]:
    """(start frame number, key frame numbers) of ``sample``."""
    try:
        start, end = clip_window(sample.onset, sample.apex, sample.offset)
    except PreprocessError as err:
        raise PreprocessError(f"clip {sample.key}: {err}") from None
    return start, key_frames(start, end, n_key)


def window_frames(sample: Sample, n_key: int = N_KEY) -> list[int]:
    """The frame numbers an image of ``sample`` is computed from: its window's start frame and
    key frames, each once. The cache keys its images by their content (``cache_path``) and a
    fold's fingerprint by the same frames (``runs.inputs_digest``)."""
    start, keys = sample_window(sample, n_key)
    return list(dict.fromkeys([start, *keys]))


# --- residual images and flows (eq. 5-7) ------------------------------------------------


def _check_crops(start: np.ndarray, keys: Sequence[np.ndarray], name: str | None) -> None:
    where = f"clip {name}: " if name else ""
    if len(keys) == 0:
        raise PreprocessError(f"{where}no key frames given")
    for image in (start, *keys):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape != start.shape:
            raise PreprocessError(
                f"{where}expected uint8 (H, W, 3) crops all shaped {start.shape}, "
                f"got {image.dtype} {image.shape}"
            )


def residual_sum(start: np.ndarray, keys: Sequence[np.ndarray]) -> np.ndarray:
    """D = sum over key frames f of |Q_f - Q_start| per pixel and channel (eq. 5 and 6
    before the wrap or the scaling), as int32."""
    base = start.astype(np.int32)
    total = np.zeros(start.shape, dtype=np.int32)
    for key in keys:
        total += np.abs(key.astype(np.int32) - base)
    return total


def absolute_residual_sum(start: np.ndarray, keys: Sequence[np.ndarray], *, name: str | None = None) -> np.ndarray:
    """ARS, eq. 5: (sum over f in F of |Q_f - Q_start|) mod 256, uint8.

    Integer arithmetic; the wrap-around at 256 is the paper's and kept literal (docs/method.md
    1.4), so three key frames each 100 above the start give 300 % 256 = 44.
    """
    _check_crops(start, keys, name)
    return (residual_sum(start, keys) % 256).astype(np.uint8)


def relative_residual_sum(start: np.ndarray, keys: Sequence[np.ndarray], *, name: str | None = None) -> np.ndarray:
    """RRS, eq. 6 and 7: D = sum over f in F of |Q_f - Q_start|, then
    (D - min D) / (max D - min D) * (g_max - g_min) + g_min with g_min = 0, g_max = 255,
    min and max over the whole image (all channels), rounded to uint8.

    A still clip (max D == min D) gives all zeros and a warning naming the clip.
    """
    _check_crops(start, keys, name)
    diff = residual_sum(start, keys)
    low, high = int(diff.min()), int(diff.max())
    if high == low:
        warnings.warn(f"clip {name or '?'}: no pixel changes between the start and key frames; RRS is all zeros")
        return np.zeros(start.shape, dtype=np.uint8)
    scaled = (diff - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow to a 3-channel uint8 image: (u, v, magnitude).

    u and v share one symmetric per-image scale: 127.5 + 127.5 * u / m with
    m = max(|u|, |v|) over the image, so 128 is no motion and their ratio is kept; the
    magnitude is 255 * |(u, v)| / its per-image max. A zero flow gives (128, 128, 0).
    """
    u, v = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(u, v)
    peak = float(max(np.abs(u).max(), np.abs(v).max()))
    peak_magnitude = float(magnitude.max())
    scale = 127.5 / peak if peak > 0 else 0.0
    channels = [
        127.5 + u * scale,
        127.5 + v * scale,
        magnitude * (255.0 / peak_magnitude) if peak_magnitude > 0 else np.zeros_like(u),
    ]
    return np.rint(np.clip(np.stack(channels, axis=-1), 0, 255)).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def farneback_flow_image(start: np.ndarray, keys: Sequence[np.ndarray], *, name: str | None = None) -> np.ndarray:
    """Farneback dense flow (OpenCV; pyramid 0.5 x 3 levels, window 15, 3 iterations,
    poly_n 5, sigma 1.2) from the grey start crop to the grey end crop (``keys[-1]``),
    encoded by ``flow_to_image`` (Table 4 baseline, docs/method.md 1.6)."""
    _check_crops(start, keys, name)
    flow = cv2.calcOpticalFlowFarneback(_grey(start), _grey(keys[-1]), None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return flow_to_image(flow)


def tvl1_flow_image(start: np.ndarray, keys: Sequence[np.ndarray], *, name: str | None = None) -> np.ndarray:
    """Dual TV-L1 flow (OpenCV contrib ``cv2.optflow.DualTVL1OpticalFlow_create``, default
    parameters) from the grey start crop to the grey end crop (``keys[-1]``), encoded by
    ``flow_to_image`` (Table 4 baseline, docs/method.md 1.6)."""
    _check_crops(start, keys, name)
    if not hasattr(cv2, "optflow"):
        raise PreprocessError("TV-L1 needs OpenCV's contrib build (cv2.optflow is missing): another OpenCV package "
                              "(opencv-python) installed beside opencv-contrib-python-headless hides it; "
                              "pip uninstall it, then reinstall opencv-contrib-python-headless")
    flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(_grey(start), _grey(keys[-1]), None)
    return flow_to_image(flow)


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "ars": absolute_residual_sum,
    "rrs": relative_residual_sum,
    "farneback": farneback_flow_image,
    "tvl1": tvl1_flow_image,
}


def _method(method: str) -> Callable[..., np.ndarray]:
    try:
        return METHODS[method]
    except KeyError:
        raise ConfigError(f"preprocessing method {method!r} is not one of {tuple(METHODS)}") from None


# --- frames and crops --------------------------------------------------------------------


JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"  # SOI and EOI markers
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # IEND chunk type and its CRC
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")  # little- and big-endian TIFF
NEARLY_UNIFORM_STD = 3.0  # grey-level std below which an aligned frame is "nearly uniform"


def truncation(data: bytes) -> str | None:
    """Why ``data`` (a JPEG, PNG, BMP or TIFF file's bytes) is cut short, or None when it is complete
    or another format. OpenCV decodes a truncated JPEG without an error, only libjpeg's
    "Premature end of JPEG file" on stderr and grey or garbled rows, so the end is checked
    here: a JPEG ends with the EOI marker FF D9 (a few bytes of padding after it allowed), a
    PNG with its IEND chunk, a BMP is as long as its header says, a TIFF holds its directory
    and image data. Entropy-coded JPEG data never holds FF D9 (FF is stuffed as FF 00)."""
    if data.startswith(JPEG_START):
        if JPEG_END not in data[-256:]:  # some writers pad or append a few bytes after EOI
            return "the JPEG data stops before its end-of-image marker FF D9"
    elif data.startswith(PNG_SIGNATURE):
        if PNG_END not in data[-64:]:
            return "the PNG data stops before its IEND chunk"
    elif data.startswith(b"BM") and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")  # the BMP header's file size (0 in a few writers)
        if declared > len(data):
            return f"the BMP header declares {declared} bytes"
    elif data[:4] in TIFF_SIGNATURES:
        return _tiff_truncation(data)
    return None


def _tiff_truncation(data: bytes) -> str | None:
    """Why a TIFF is cut short: its first directory (IFD) lies past the end (writers often put
    it last), or its image strips or tiles end past it; None when neither."""
    if len(data) < 8:
        return "the TIFF header is incomplete"
    directory = int.from_bytes(data[4:8], "little" if data[:2] == b"II" else "big")
    if directory + 2 > len(data):
        return f"the TIFF header places its directory at byte {directory}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data": OpenCV's decoder decides
            with Image.open(io.BytesIO(data)) as image:
                tags = image.tag_v2
            offsets = tags.get(273) or tags.get(324) or ()  # StripOffsets or TileOffsets
            counts = tags.get(279) or tags.get(325) or ()  # StripByteCounts or TileByteCounts
    except Exception:  # noqa: BLE001 - a directory Pillow cannot parse is left to OpenCV's decoder
        return None
    end = max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)
    return f"its image data ends at byte {end}" if end > len(data) else None


def _decode_quietly(data: bytes) -> np.ndarray | None:
    """``cv2.imdecode`` with OpenCV's own log silenced: a file it cannot decode gets the kit's
    one line naming the clip and the file, not OpenCV's "[ERROR:0@...] ... TIFF_Error" lines
    above it. (libjpeg's warnings do not pass through this log.)"""
    if not data:
        return None
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(level)


def read_frame(path: str | Path, clip: str = "?") -> np.ndarray:
    """One frame as RGB uint8; an unreadable, corrupt or truncated (incompletely decoded)
    file raises PreprocessError naming the clip and the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PreprocessError(f"clip {clip}: cannot read frame {path} ({err.strerror})") from None
    cut = truncation(data)
    if cut is not None:
        raise PreprocessError(f"clip {clip}: frame {path} is truncated ({len(data)} bytes; {cut}); "
                              "copy or extract it again")
    image = _decode_quietly(data)
    if image is None:
        raise PreprocessError(f"clip {clip}: cannot read frame {path} (missing, not an image, or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def warn_if_nearly_uniform(crops: Mapping[int, np.ndarray], sample: Sample) -> None:
    """Warn, naming the clip and file, for every aligned frame that is nearly one grey level
    (black, blank or blown out): the face is found on the start frame only (by design), so
    such a key frame would otherwise pass without a word and dominate the residual image."""
    for number, crop in crops.items():
        spread = float(_grey(crop).std())
        if spread < NEARLY_UNIFORM_STD:
            warnings.warn(
                f"clip {sample.key}: aligned frame {number} ({sample.frame_path(number)}) is nearly uniform "
                f"(grey-level std {spread:.1f}, mean {float(crop.mean()):.0f}): a black, blank or blown-out frame?",
                UserWarning, stacklevel=3)


def load_image(path: str | Path) -> np.ndarray:
    """A preprocessed image (PNG) as (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PreprocessError(f"cannot read preprocessed image {path} (missing or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _crops(sample: Sample, start: int, numbers: Sequence[int], size: int, face_crop: str, timings: dict):
    """Aligned crops of the frames ``numbers``, the aligner fitted on frame ``start``."""
    clock = time.perf_counter()
    wanted = list(dict.fromkeys([start, *numbers]))
    frames = {n: read_frame(sample.frame_path(n), sample.key) for n in wanted}
    for n, frame in frames.items():
        if frame.shape != frames[start].shape:
            raise PreprocessError(
                f"clip {sample.key}: frame {sample.frame_path(n)} is {frame.shape[1]}x{frame.shape[0]}, "
                f"the start frame is {frames[start].shape[1]}x{frames[start].shape[0]}"
            )
    timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - clock
    if face_crop == "dlib":  # once per process; kept apart so "face" is the per-clip cost
        clock = time.perf_counter()
        load_face_models()
        timings["model load"] = timings.get("model load", 0.0) + time.perf_counter() - clock
    clock = time.perf_counter()
    aligner = make_aligner(face_crop, size).fit(frames[start], clip=sample.key, frame_path=sample.frame_path(start))
    crops = {n: aligner.align(frame) for n, frame in frames.items()}
    warn_if_nearly_uniform(crops, sample)
    timings["face"] = timings.get("face", 0.0) + time.perf_counter() - clock
    return crops


def aligned_crops(sample: Sample, frame_numbers: Sequence[int], size: int = PREPROCESS_SIZE, face_crop: str = FACE_CROP) -> np.ndarray:
    """(T, size, size, 3) uint8 RGB crops of ``frame_numbers``, all under the one similarity
    transform fitted on the sample's window start frame (its onset, eq. 1)."""
    start, _ = sample_window(sample)
    crops = _crops(sample, start, frame_numbers, size, face_crop, {})
    return np.stack([crops[n] for n in frame_numbers]) if frame_numbers else np.zeros((0, size, size, 3), np.uint8)


def preprocess_sample(
    sample: Sample, method: str, n_key: int = N_KEY, face_crop: str = FACE_CROP, size: int = PREPROCESS_SIZE, timings: dict | None = None
) -> np.ndarray:
    """The (size, size, 3) uint8 image of one clip: window (eq. 1-2), key frames (eq. 3-4),
    aligned crops, then ``METHODS[method]``. ``timings``, if given, accumulates seconds
    under "decode", "model load" (dlib, once per process), "face" (detection, landmarks
    and warps) and "residual"."""
    function = _method(method)
    timings = {} if timings is None else timings
    start, keys = sample_window(sample, n_key)
    crops = _crops(sample, start, keys, size, face_crop, timings)
    clock = time.perf_counter()
    image = function(crops[start], [crops[k] for k in keys], name=sample.key)
    timings["residual"] = timings.get("residual", 0.0) + time.perf_counter() - clock
    return image


# --- cache -------------------------------------------------------------------------------


def _safe(part: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip(".")
    return cleaned or "_"


def cache_path(cache_dir: str | Path, sample: Sample, method: str, params: Mapping,
               frames: Sequence[int] | None = None) -> Path:
    """Where ``sample``'s image for (method, params) lives:
    ``cache_dir/method/<dataset>/<subject>/<clip>__<hash>.png``.

    The hash covers everything that changes the output: PREPROCESS_VERSION, method, every
    entry of ``params`` (n_key, face_crop, size), the face-crop constants, the clip window
    and the name and content (sha256, :func:`mer_utils.files.file_digest`) of every frame
    file used: ``frames`` (frame numbers; by default the window's start and key frames), so
    changed input or a changed parameter gives a new path and never a stale image, even when
    a replaced frame keeps its size and mtime (a ``cp -p`` or ``tar x`` of another version).
    """
    if frames is None:
        frames = window_frames(sample, int(params.get("n_key", N_KEY)))
    files = []
    for number in dict.fromkeys(frames):
        path = sample.frame_path(number)
        try:
            files.append([path.name, file_digest(path)])
        except OSError as err:
            raise PreprocessError(f"clip {sample.key}: cannot read frame {path}: {err.strerror}") from None
    face = {"detect_width": DETECT_WIDTH, "forehead": FOREHEAD, "margin": MARGIN}
    record = {
        "version": PREPROCESS_VERSION,
        "method": method,
        "params": {k: params[k] for k in sorted(params)},
        "face": face if params.get("face_crop", "dlib") == "dlib" else None,
        "window": [sample.onset, sample.apex, sample.offset],
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / _safe(method) / _safe(sample.dataset) / _safe(sample.subject)
    return folder / f"{_safe(sample.clip)}__{digest}.png"


def cached_file_ok(path: Path) -> bool:
    """Whether a cache file is there and reads back (a PNG that decodes, a ``.npy`` that
    loads). One that does not, damaged on disk, gets a warning naming it and is computed
    again (its atomic write replaces it); False also when it is absent."""
    if not path.is_file():
        return False
    try:
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
            return True
        data = path.read_bytes()
        if truncation(data) is None and _decode_quietly(data) is not None:
            return True
    except (OSError, ValueError):
        pass
    warnings.warn(f"cached file {path} is damaged (it does not read back): computing it again", UserWarning, stacklevel=3)
    return False


def write_image_atomic(path: Path, image: np.ndarray) -> None:
    """Write ``image`` (RGB) as PNG at ``path`` via a temporary file in the same folder and
    ``os.replace``, so an interrupted write never leaves a file at ``path``."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise PreprocessError(f"cannot encode PNG for {path}")
    atomic_write_bytes(path, encoded.tobytes(), fsync=True)


# --- many clips ------------------------------------------------------------------------------


@dataclass
class PreprocessResult:
    """What ``preprocess_samples`` did: ``paths`` (sample.key -> PNG), how many images were
    ``computed`` and how many read from the ``cached`` ones, wall ``seconds``, and
    ``timings`` (seconds in "decode", "model load", "face", "residual", "write", summed over
    the computed clips and all worker processes)."""

    paths: dict[str, Path]
    computed: int
    cached: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _compute_and_write(sample: Sample, method: str, n_key: int, face_crop: str, size: int, path: Path):
    """Worker: compute one clip's image and write it atomically; returns (its timings, the
    messages of the warnings it raised, for the parent to re-raise)."""
    timings: dict[str, float] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = preprocess_sample(sample, method, n_key=n_key, face_crop=face_crop, size=size, timings=timings)
    clock = time.perf_counter()
    write_image_atomic(path, image)
    timings["write"] = time.perf_counter() - clock
    return timings, [str(w.message) for w in caught]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    exit_with_parent()  # a killed `mer preprocess` or `mer loso` leaves no pool worker behind
    cv2.setNumThreads(1)  # one process per core already


def _failure(sample: Sample, err: BaseException) -> str:
    return str(err) if sample.key in str(err) else f"clip {sample.key}: {type(err).__name__}: {err}"


def preprocess_samples(
    samples: Iterable[Sample],
    method: str,
    cache_dir: str | Path,
    n_key: int = N_KEY,
    face_crop: str = FACE_CROP,
    size: int = PREPROCESS_SIZE,
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocess every sample once per (method, parameters) and return PNG paths.

    Cached images are reused without computing anything. The rest run in ``workers``
    processes (default: the CPUs this process may use; 1 runs in this process), started
    with "spawn" (a script calling this needs the usual ``if __name__ == "__main__":``
    guard), at most two clips per worker in flight, each writing its own PNG, so memory does
    not grow with the dataset. A failing clip does not stop the others: once all are done
    (their images written and valid), a PreprocessError names every failed clip and gives
    the first one's cause.
    """
    from tqdm import tqdm

    _method(method)
    check_int("n_key", n_key)
    check_int("size", size, MIN_SIZE)
    make_aligner(face_crop, size)  # validates face_crop before any work
    workers = _cpu_count() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    clock = time.perf_counter()
    params = {"n_key": n_key, "face_crop": face_crop, "size": size}
    unique = {s.key: s for s in samples}
    timings = {"decode": 0.0, "model load": 0.0, "face": 0.0, "residual": 0.0, "write": 0.0}
    failures: list[tuple[Sample, BaseException]] = []
    paths, todo, cached = {}, [], 0
    for key, sample in unique.items():
        try:
            paths[key] = cache_path(cache_dir, sample, method, params)
        except Exception as err:  # e.g. a frame missing on disk: reported with the others
            failures.append((sample, err))
            continue
        if cached_file_ok(paths[key]):
            cached += 1
        else:
            todo.append(sample)
    if todo:
        check_writable(cache_dir)
    bar = tqdm(total=len(unique), initial=cached + len(failures), disable=not progress,
               desc=f"preprocess {method}", unit="clip")

    def record(sample: Sample, outcome: tuple | BaseException) -> None:
        if isinstance(outcome, BaseException):
            failures.append((sample, outcome))
        else:
            clip_timings, messages = outcome
            for name, seconds in clip_timings.items():
                timings[name] = timings.get(name, 0.0) + seconds
            for message in messages:  # warnings raised in a worker process, shown here
                warnings.warn(message, stacklevel=3)
        bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            for sample in todo:
                try:
                    record(sample, _compute_and_write(sample, method, n_key, face_crop, size, paths[sample.key]))
                except Exception as err:  # reported below, after the other clips
                    record(sample, err)
        else:
            _run_pool(todo, workers, record, method, n_key, face_crop, size, paths)
    finally:
        bar.close()
    if failures:
        sample, first = failures[0]
        names = ", ".join(s.key for s, _ in failures)
        written = "the other images are written" if len(failures) < len(unique) else "no image was written"
        raise PreprocessError(
            f"{len(failures)} of {len(unique)} clips failed ({names}); {written}. "
            f"First failure: {_failure(sample, first)}"
        ) from first
    return PreprocessResult(paths, len(todo), cached, time.perf_counter() - clock, timings)


def check_writable(folder: str | Path) -> None:
    """Create ``folder`` (the preprocessing cache) if needed and write (then remove) a probe
    file in it, so a cache that cannot take the results fails at once, not after every clip is
    computed."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cache folder {folder} is a file, not a folder; nothing was computed")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"cannot write to the cache folder {folder} ({err.strerror or err}): nothing was computed; "
                          "give a cache folder you can write to (--cache-dir, or --out of mer preprocess)") from None


def _run_pool(todo, workers, record, method, n_key, face_crop, size, paths) -> None:
    """Run ``todo`` in a spawn-started process pool, submitting lazily (bounded in flight)."""
    context = multiprocessing.get_context("spawn")  # safe beside threads (tqdm, torch, dask)
    pending = iter(todo)
    in_flight: dict[cf.Future, Sample] = {}
    with cf.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_init_worker) as pool:
        try:
            while True:
                while len(in_flight) < 2 * workers:
                    sample = next(pending, None)
                    if sample is None:
                        break
                    future = pool.submit(_compute_and_write, sample, method, n_key, face_crop, size, paths[sample.key])
                    in_flight[future] = sample
                if not in_flight:
                    return
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    sample = in_flight.pop(future)
                    error = future.exception()
                    if isinstance(error, BrokenProcessPool):
                        names = ", ".join([sample.key, *(s.key for s in in_flight.values())])
                        raise PreprocessError(f"a worker process died (out of memory or a crash) in {names}") from error
                    record(sample, error if error is not None else future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def load_images(result: PreprocessResult) -> dict[str, np.ndarray]:
    """Every image of ``result`` as sample.key -> (H, W, 3) uint8 RGB."""
    return {key: load_image(path) for key, path in result.paths.items()}


# --------------------------------------------------------------------------- walkthrough (notebook 01)


def clip_walkthrough(sample, n_key: int = N_KEY, face_crop: str = FACE_CROP, size: int = PREPROCESS_SIZE) -> dict:
    """One clip through every preprocessing step (paper 3.1, Figure 1).

    Returns ``window`` (start, end; eq. 1-2), ``key_frames`` (eq. 3-4), ``frames`` (the raw
    start and end frames), ``crops`` (the aligned start and key-frame crops), ``images``
    (ARS eq. 5, RRS eq. 6-7, Farneback, TV-L1) and ``seconds`` per step; crops are
    ``size`` x ``size`` as in the cache.
    """

    seconds: dict[str, float] = {}
    window = clip_window(sample.onset, sample.apex, sample.offset)
    start, keys = sample_window(sample, n_key)
    clock = time.perf_counter()
    numbers = window_frames(sample, n_key)
    crops = dict(zip(numbers, aligned_crops(sample, numbers, size=size, face_crop=face_crop)))
    seconds["read + align"] = time.perf_counter() - clock
    images = {}
    for method, function in METHODS.items():
        clock = time.perf_counter()
        images[method] = function(crops[start], [crops[k] for k in keys], name=sample.key)
        seconds[method] = time.perf_counter() - clock
    return {
        "window": window,
        "key_frames": keys,
        "frames": {f"start frame {start}": read_frame(sample.frame_path(start), sample.key),
                   f"end frame {window[1]}": read_frame(sample.frame_path(window[1]), sample.key)},
        "crops": {f"aligned {'start' if n == start else 'key'} {n}": crops[n] for n in numbers},
        "images": images,
        "seconds": seconds,
    }


def preprocess_protocol(samples, methods: Iterable[str], cache_dir: str | os.PathLike, n_key: int = N_KEY,
                        face_crop: str = FACE_CROP, size: int = PREPROCESS_SIZE, workers: int | None = None):
    """Preprocess ``samples`` with each method into the cache with the parameters the runner
    uses (n_key, face_crop, size), so later experiments read these images. One row per
    method: counts (images, computed, read from the cache), wall seconds, and seconds per
    step summed over the computed clips across processes."""

    import pandas as pd

    rows = {}
    for method in methods:
        result = preprocess_samples(samples, method=method, cache_dir=cache_dir, n_key=n_key, size=size,
                                    face_crop=face_crop, workers=workers, progress=False)
        rows[method] = {
            "images": len(result.paths), "computed": result.computed, "cached": result.cached,
            "wall s": result.seconds,
            "s per computed clip": result.seconds / result.computed if result.computed else np.nan,
            **{f"{step} s (CPU)": value for step, value in result.timings.items()},
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table.round(3)


def cached_images(samples: Sequence, method: str, cache_dir: str | os.PathLike, n_key: int = N_KEY,
                  face_crop: str = FACE_CROP, size: int = PREPROCESS_SIZE, workers: int | None = None) -> np.ndarray:
    """The samples' preprocessed images (N, size, size, 3) from the cache the runner uses,
    computing the missing ones (same parameters, so the same cache entries)."""

    result = preprocess_samples(samples, method=method, cache_dir=cache_dir, n_key=n_key, face_crop=face_crop,
                                size=size, workers=workers, progress=False)
    return np.stack([load_image(result.paths[s.key]) for s in samples])


def start_crop(sample, face_crop: str = FACE_CROP, size: int = PREPROCESS_SIZE) -> np.ndarray:
    """The aligned ``size`` x ``size`` face crop of the clip's start frame (its onset)."""

    start, _ = sample_window(sample)
    return aligned_crops(sample, [start], size=size, face_crop=face_crop)[0]
