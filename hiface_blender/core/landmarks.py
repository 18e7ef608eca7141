"""Face landmarks from a photo.

Default backend: MediaPipe Face Landmarker (the bundled `.task`): 478 points, 52 ARKit-style
blendshape scores and a 4x4 facial transformation matrix. Optional backend: `face_alignment`
(68 Multi-PIE points), which downloads its weights at run time and is therefore never the
default; `make_detector` falls back to MediaPipe when it cannot be used.

Coordinates: x, y in pixels of the image passed to `detect` (x right, y down, pixel centres at
integer + 0.5 as MediaPipe normalises by the image size); z is MediaPipe's relative depth
multiplied by the image width (MediaPipe scales z like x), smaller = closer to the camera.
"""
from __future__ import annotations

import atexit
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import HiFaceError

N_MP_POINTS = 478
N_SCORES = 52
MAX_FACES = 4
# MediaPipe's short-range detector sees the whole image at 128x128: a face narrower than about
# a tenth of the image is missed. In larger images, tiles are searched for a face the whole image
# did not show, and for smaller faces beside the one it did (to count them).
TILE_RETRY_MIN_SIDE = 400

# ---------------------------------------------------------------------------------------------
# MediaPipe blendshape names -> ICT expression names

MP_SCORE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)


def _ict_names(mp_name: str) -> tuple[str, ...]:
    if mp_name in ("browInnerUp", "cheekPuff"):       # one MediaPipe score, two ICT halves
        return (f"{mp_name}_L", f"{mp_name}_R")
    if mp_name in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):   # directions, not sides
        return (mp_name,)
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if mp_name.endswith(side):
            return (mp_name[: -len(side)] + suffix,)
    return (mp_name,)


# ARKit's Left/Right are the subject's own sides, as are ICT's _L/_R: the names map directly.
MP_TO_ARKIT: dict[str, tuple[str, ...]] = {n: _ict_names(n) for n in MP_SCORE_NAMES[1:]}


def scores_to_ict(scores, score_names, exp_names) -> np.ndarray:
    """MediaPipe blendshape scores -> one weight per ICT expression (order of exp_names).
    ICT shapes with no MediaPipe counterpart get 0."""
    index = {str(n): i for i, n in enumerate(exp_names)}
    out = np.zeros(len(exp_names), np.float32)
    for s, name in zip(np.asarray(scores, np.float32), score_names):
        for ict in MP_TO_ARKIT.get(str(name), ()):
            if ict in index:
                out[index[ict]] = s
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------

@dataclass
class Detection:
    points: np.ndarray            # (N, 3) float32: x, y pixels; z pixel-scaled depth
    scores: np.ndarray            # (52,) float32 blendshape scores (zeros if unavailable)
    score_names: np.ndarray       # (52,) str, MediaPipe names, `_neutral` first
    matrix: np.ndarray            # (4, 4) float32 MediaPipe facial transformation (cm), for
                                  # the image (or tile, see notes) the face was found in
    n_faces: int                  # faces found in the photo
    bbox: tuple[float, float, float, float]   # x0, y0, x1, y1 of the points, pixels
    kind: str = "mediapipe478"    # or "fa68" (Multi-PIE order)
    notes: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)       # (height, width) the points refer to

    @property
    def interocular(self) -> float:
        """Distance between the outer eye corners, pixels (for error normalisation)."""
        a, b = (33, 263) if self.kind == "mediapipe478" else (36, 45)
        return float(np.linalg.norm(self.points[a, :2] - self.points[b, :2]))


_LIVE: "weakref.WeakSet[LandmarkDetector]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # MediaPipe's own __del__ runs during interpreter teardown, after its C bindings are gone,
    # and prints a TypeError. Closing first makes that __del__ a no-op.
    for det in list(_LIVE):
        det.close()


def _check_rgb(rgb) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise HiFaceError(f"Landmark detection needs an RGB uint8 image, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


class LandmarkDetector:
    """One detector instance, used by one worker thread at a time (calls are serialised by a
    lock, so accidental sharing is slow, not wrong). Close it when done, or use `with`."""

    def __init__(self, task_path, backend: str = "mediapipe", device: str = "cpu"):
        self.backend = backend
        self.task_path = Path(task_path) if task_path else None
        self._lock = threading.Lock()
        self._closed = False
        self._mp = None
        self._fa = None
        if backend == "mediapipe":
            self._mp = _open_mediapipe(self.task_path)
        elif backend == "face-alignment":
            self._fa = _open_face_alignment(device)
            # Expression scores and the head matrix still come from MediaPipe where possible.
            if self.task_path is not None and self.task_path.is_file():
                self._mp = _open_mediapipe(self.task_path)
        else:
            raise HiFaceError(f"Unknown landmark backend '{backend}' (mediapipe, face-alignment)")
        _LIVE.add(self)

    @property
    def kind(self) -> str:
        return "fa68" if self.backend == "face-alignment" else "mediapipe478"

    def close(self) -> None:
        with self._lock:
            if self._mp is not None:
                self._mp.close()
                self._mp = None
            self._fa = None
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detect(self, rgb) -> Detection:
        """Landmarks of the largest face in an RGB uint8 image; HiFaceError if there is none."""
        rgb = _check_rgb(rgb)
        with self._lock:
            if self._closed:
                raise HiFaceError("The landmark detector has been closed")
            if self._fa is not None:
                return self._detect_fa(rgb)
            return self._detect_mp(rgb)

    # -- MediaPipe ------------------------------------------------------------------------------

    def _detect_mp(self, rgb: np.ndarray) -> Detection:
        h, w = rgb.shape[:2]
        faces = _run_mp(self._mp, rgb, 0, 0)
        notes: list[str] = []
        counted_only = 0
        if min(h, w) >= TILE_RETRY_MIN_SIDE:
            if not faces:
                faces = search_tiles(self._run, rgb)
                if faces:
                    notes.append("face found only in a search of image tiles (small face in a large photo)")
            else:
                # Faces too small for the whole-image pass are only counted: the largest face
                # keeps the landmarks the whole image gave it.
                counted_only = len(self._other_faces(rgb, faces))
        if not faces:
            raise HiFaceError("No face found in the photo")
        n_faces = len(faces) + counted_only
        faces.sort(key=lambda f: -_area(f[0]))
        if n_faces > 1:
            notes.append(f"{n_faces} faces found, using the largest")
        pts, scores, names, matrix = faces[0]
        return Detection(pts, scores, names, matrix, n_faces, _bbox(pts), "mediapipe478",
                         notes, (h, w))

    def _run(self, crop: np.ndarray, ox: int, oy: int) -> list:
        return _run_mp(self._mp, crop, ox, oy)

    def _other_faces(self, rgb: np.ndarray, faces: list) -> list:
        """Faces in half-size overlapping tiles that are not one of `faces` (a tile holding part
        of a known face can find it again, cut: its centre then lies inside the known box)."""
        known = [_bbox(f[0]) for f in faces]
        return [f for f in _dedupe(faces_in_tiles(self._run, rgb, 2))
                if not any(_contains(b, _centre(f[0])) for b in known)]

    # -- face-alignment -------------------------------------------------------------------------

    def _detect_fa(self, rgb: np.ndarray) -> Detection:
        h, w = rgb.shape[:2]
        try:
            found = self._fa.get_landmarks_from_image(rgb)
        except Exception as e:  # its detector raises plain errors on odd input
            raise HiFaceError(f"face-alignment failed on this photo: {e}") from None
        if not found:
            raise HiFaceError("No face found in the photo")
        found = sorted((np.asarray(p, np.float32) for p in found), key=lambda p: -_area(p))
        pts = found[0]
        if pts.shape[1] == 2:
            pts = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], 1)
        notes = [f"{len(found)} faces found, using the largest"] if len(found) > 1 else []
        scores = np.zeros(N_SCORES, np.float32)
        matrix = np.eye(4, dtype=np.float32)
        if self._mp is not None:
            mp_faces = _run_mp(self._mp, rgb, 0, 0)
            if mp_faces:
                # The MediaPipe face whose box centre is nearest the chosen face.
                c = np.mean(pts[:, :2], 0)
                best = min(mp_faces, key=lambda f: np.linalg.norm(np.mean(f[0][:, :2], 0) - c))
                scores, matrix = best[1], best[3]
            else:
                notes.append("no expression scores: MediaPipe did not find the face")
        return Detection(pts.astype(np.float32), scores, np.array(MP_SCORE_NAMES), matrix,
                         len(found), _bbox(pts), "fa68", notes, (h, w))


def make_detector(task_path, backend: str = "mediapipe", device: str = "cpu",
                  notes: list[str] | None = None) -> LandmarkDetector:
    """The requested detector, or MediaPipe with the reason appended to `notes` when the
    optional backend cannot be used."""
    if backend != "mediapipe":
        try:
            return LandmarkDetector(task_path, backend, device)
        except HiFaceError as e:
            if notes is not None:
                notes.append(str(e))
    return LandmarkDetector(task_path, "mediapipe")


# ---------------------------------------------------------------------------------------------

def _open_mediapipe(task_path: Path | None):
    if task_path is None or not Path(task_path).is_file():
        raise HiFaceError(f"MediaPipe face landmarker not found at {task_path}; "
                          "run `python3 build.py setup`")
    os.environ.setdefault("GLOG_minloglevel", "2")   # keep MediaPipe's C++ logging quiet
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as e:
        raise HiFaceError(f"MediaPipe is not installed ({e})") from None
    # A buffer rather than a path: MediaPipe's file reader fails on some non-ASCII paths.
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_buffer=Path(task_path).read_bytes()),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=MAX_FACES,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    try:
        landmarker = vision.FaceLandmarker.create_from_options(options)
    except (RuntimeError, ValueError) as e:
        raise HiFaceError(f"Cannot load the face landmarker {Path(task_path).name}: {e}") from None
    landmarker._hiface_mp = mp  # keeps the module alive as long as the landmarker
    return landmarker


def _run_mp(landmarker, rgb: np.ndarray, ox: int, oy: int) -> list:
    """Faces in `rgb` (a crop whose top-left corner is at ox, oy of the photo) as
    (points (478,3) in full-image pixels, scores, names, matrix)."""
    mp = landmarker._hiface_mp
    h, w = rgb.shape[:2]
    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
    return faces_in_result(landmarker.detect(image), w, h, ox, oy)


def faces_in_result(res, w: int, h: int, ox: int = 0, oy: int = 0) -> list:
    """A Face Landmarker result on a w x h image (or crop whose top-left corner is at ox, oy)
    as (points (478,3): x, y in full-image pixels, z in pixels; scores; names; matrix) per
    face; identity matrices where the landmarker was not asked for them."""
    faces = []
    for i, lms in enumerate(res.face_landmarks):
        p = np.array([(l.x, l.y, l.z) for l in lms], np.float32)
        p[:, 0] = p[:, 0] * w + ox
        p[:, 1] = p[:, 1] * h + oy
        p[:, 2] *= w
        if res.face_blendshapes:
            cats = sorted(res.face_blendshapes[i], key=lambda c: c.index)
            scores = np.array([c.score for c in cats], np.float32)
            names = np.array([c.category_name for c in cats])
        else:
            scores, names = np.zeros(N_SCORES, np.float32), np.array(MP_SCORE_NAMES)
        if res.facial_transformation_matrixes:
            m = np.asarray(res.facial_transformation_matrixes[i], np.float32).reshape(4, 4)
        else:
            m = np.eye(4, dtype=np.float32)
        faces.append((p, scores, names, m))
    return faces


def faces_in_tiles(run, rgb: np.ndarray, n: int) -> list:
    """Faces in overlapping square tiles of 1/n of the long side (half-tile overlap).
    `run(crop, ox, oy)` is the detector: faces with their points (first) in image pixels."""
    h, w = rgb.shape[:2]
    side = min(h, w, int(np.ceil(max(h, w) / n)))
    return [f for y in _starts(h, side) for x in _starts(w, side)
            for f in run(rgb[y:y + side, x:x + side], x, y)]


def crop_around(pts: np.ndarray, size: tuple[int, int], scale: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): a square `scale` times the face's box, centred on it, within the image."""
    h, w = size
    x0, y0, x1, y1 = _bbox(pts)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, scale / 2 * max(x1 - x0, y1 - y0)
    return (int(max(0, cx - half)), int(max(0, cy - half)),
            int(min(w, cx + half)), int(min(h, cy + half)))


def search_tiles(run, rgb: np.ndarray) -> list:
    """Faces too small for a whole-image pass: overlapping square tiles at two scales; each face
    found is detected again on a crop centred on it, so that the landmark network sees it with
    context. `run` as in `faces_in_tiles`."""
    for n in (2, 4):
        found = faces_in_tiles(run, rgb, n)
        if found:
            break
    if not found:
        return []
    out = []
    for f in _dedupe(found):
        x0, y0, x1, y1 = crop_around(f[0], rgb.shape[:2], 3.0)
        again = run(rgb[y0:y1, x0:x1], x0, y0)
        out.append(max(again, key=lambda g: _area(g[0])) if again else f)
    return _dedupe(out)


def _starts(length: int, side: int) -> list[int]:
    """Tile origins with half-tile overlap, the last tile flush with the far edge."""
    s = list(range(0, max(1, length - side + 1), max(1, side // 2)))
    if s[-1] != length - side:
        s.append(length - side)
    return s


def _bbox(pts: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0 = pts[:, :2].min(0)
    x1, y1 = pts[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def _centre(pts: np.ndarray) -> tuple[float, float]:
    x0, y0, x1, y1 = _bbox(pts)
    return (x0 + x1) / 2, (y0 + y1) / 2


def _contains(box, point) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _area(pts: np.ndarray) -> float:
    x0, y0, x1, y1 = _bbox(pts)
    return (x1 - x0) * (y1 - y0)


def _dedupe(faces: list) -> list:
    """Drop faces seen twice in overlapping tiles (box IoU > 0.3), keeping the larger."""
    faces = sorted(faces, key=lambda f: -_area(f[0]))
    kept: list = []
    for f in faces:
        a = _bbox(f[0])
        if all(_iou(a, _bbox(k[0])) < 0.3 for k in kept):
            kept.append(f)
    return kept


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _open_face_alignment(device: str):
    try:
        import face_alignment
    except ImportError:
        raise HiFaceError("The face-alignment landmark backend is not installed "
                          "(pip package face_alignment); using MediaPipe instead") from None
    types = face_alignment.LandmarksType
    three_d = getattr(types, "THREE_D", None) or getattr(types, "_3D")
    try:
        return face_alignment.FaceAlignment(three_d, device=device, flip_input=False)
    except Exception as e:  # weight download: URLError, HTTPError, socket errors, hash errors
        raise HiFaceError("The face-alignment backend could not get its model weights "
                          f"(it downloads them on first use: {type(e).__name__}); "
                          "using MediaPipe instead") from None
