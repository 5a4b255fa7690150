"""Face alignment for preprocessing (paper 3.1, "Detect Feature Point" and "Cropping").

docs/method.md 1.2: dlib's HOG frontal face detector plus the 68-point shape predictor run on
the clip's **start** frame only; one square box from the landmarks, widened upwards so the
brows and forehead are in; one similarity transform (eye line level, scaled to ``size``)
that is then applied to **every** frame of the clip, so residuals measure facial motion
and not re-detection jitter.

Detection is the costly step, so it runs on a downscaled copy of the frame (longest side
``detect_width``) and the box is mapped back; the shape predictor runs at full resolution.
The dlib models are loaded lazily, once per process.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from mer_utils.errors import ConfigError, PreprocessError

FACE_CROPS = ("dlib", "none")  # detect and align with dlib, or frames that are already face crops
FACE_CROP = FACE_CROPS[0]  # the default
DETECT_WIDTH = 400  # longest side of the copy the HOG detector sees (faces >= ~80 px there)
FOREHEAD = 0.25  # the box's top is raised by this share of the brow-to-chin height
MARGIN = 0.10  # the square's side is the landmarks' extent times (1 + MARGIN)
MIN_SIZE = 8  # smallest side of an aligned crop
RIGHT_EYE = slice(36, 42)  # iBUG 68-point indices: the subject's right eye (image left)
LEFT_EYE = slice(42, 48)


def landmark_model_path() -> Path:
    """The 68-point model file inside ``face_recognition_models``, found without importing it
    (its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise PreprocessError(
            "package face_recognition_models is not installed: it ships the 68-point "
            "landmark model (shape_predictor_68_face_landmarks.dat) that face_crop='dlib' needs"
        )
    path = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise PreprocessError(f"68-point landmark model not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_face_models():
    """(dlib HOG detector, 68-point shape predictor), loaded on first use (about 0.5 s) and
    kept for the process."""
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmark_model_path()))


def similarity_from_landmarks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 matrix mapping frame pixels to the ``size`` x ``size`` crop.

    Rotation by minus the eye line's angle (eye centres = means of landmarks 36-41 and
    42-47) levels the eyes. In that levelled frame, the landmarks' bounding box has its top
    raised by ``FOREHEAD`` of its height (brows and forehead in); the square crop is centred
    on that box with side ``max(width, height) * (1 + MARGIN)``, scaled to ``size``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    eye_a, eye_b = points[RIGHT_EYE].mean(axis=0), points[LEFT_EYE].mean(axis=0)
    angle = math.atan2(eye_b[1] - eye_a[1], eye_b[0] - eye_a[0])
    cos, sin = math.cos(-angle), math.sin(-angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    levelled = points @ rotation.T
    (x0, y0), (x1, y1) = levelled.min(axis=0), levelled.max(axis=0)
    y0 -= FOREHEAD * (y1 - y0)
    side = max(x1 - x0, y1 - y0) * (1.0 + MARGIN)
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    scale = size / side
    linear = scale * rotation
    shift = size / 2.0 - scale * centre
    return np.hstack([linear, shift[:, None]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) frame coordinates through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


class FaceAligner:
    """Fit once on a clip's start frame, then ``align`` every frame with the same matrix.

    ``fit(frame, clip=..., frame_path=...)`` finds the largest face (HOG detector on a copy
    whose longest side is ``detect_width``; if none, retried with dlib upsampling 1 then 2
    when ``upsample_retry``), runs the 68-point predictor at full resolution and sets
    ``landmarks`` (68, 2), ``box`` (the detector's box in frame pixels) and ``matrix`` (2x3).
    No face raises PreprocessError naming the clip and the frame path.
    """

    def __init__(self, size: int = 320, detect_width: int = DETECT_WIDTH, upsample_retry: bool = True):
        if size < MIN_SIZE or detect_width < 64:
            raise ConfigError(f"FaceAligner: size {size} (>= {MIN_SIZE}) or detect_width {detect_width} (>= 64) too small")
        self.size = size
        self.detect_width = detect_width
        self.upsample_retry = upsample_retry
        self.landmarks: np.ndarray | None = None
        self.box: tuple[float, float, float, float] | None = None
        self.matrix: np.ndarray | None = None

    def _detect(self, frame: np.ndarray):
        """Largest face box (left, top, right, bottom) in full-frame pixels, or None."""
        detector, _ = load_face_models()
        height, width = frame.shape[:2]
        factor = min(1.0, self.detect_width / max(height, width))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if factor < 1.0:
            grey = cv2.resize(grey, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)
        for upsample in (0, 1, 2) if self.upsample_retry else (0,):
            faces = detector(grey, upsample)
            if len(faces):
                best = max(faces, key=lambda r: r.width() * r.height())
                return tuple(v / factor for v in (best.left(), best.top(), best.right(), best.bottom()))
        return None

    def fit(self, frame: np.ndarray, clip: str = "?", frame_path: str | Path = "?") -> "FaceAligner":
        """Detect the face and its landmarks in ``frame`` (RGB uint8) and set ``matrix``."""
        import dlib

        box = self._detect(frame)
        if box is None:
            retries = "upsampling 0, 1 and 2" if self.upsample_retry else "no upsampling retry"
            raise PreprocessError(
                f"clip {clip}: no face found in start frame {frame_path} "
                f"(dlib HOG detector on a copy with longest side {self.detect_width} px, {retries})"
            )
        _, predictor = load_face_models()
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = predictor(frame, rect)
        self.box = box
        self.landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        self.matrix = similarity_from_landmarks(self.landmarks, self.size)
        return self

    def align(self, frame: np.ndarray) -> np.ndarray:
        """The ``size`` x ``size`` RGB crop of ``frame`` under the fitted matrix."""
        if self.matrix is None:
            raise PreprocessError("FaceAligner.align called before fit")
        return cv2.warpAffine(
            frame, self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )


class ResizeOnly:
    """``face_crop="none"``: the dataset ships cropped faces; ``align`` only resizes."""

    def __init__(self, size: int = 320):
        self.size = size

    def fit(self, frame: np.ndarray, clip: str = "?", frame_path: str | Path = "?") -> "ResizeOnly":
        return self

    def align(self, frame: np.ndarray) -> np.ndarray:
        return cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)


def make_aligner(face_crop: str, size: int) -> FaceAligner | ResizeOnly:
    """The aligner for ``face_crop`` ("dlib" or "none")."""
    if face_crop == "dlib":
        return FaceAligner(size=size)
    if face_crop == "none":
        return ResizeOnly(size=size)
    raise ConfigError(f"face_crop {face_crop!r} is not one of {FACE_CROPS}")
