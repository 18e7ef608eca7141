"""Plain result types of the engine, saved and loaded as .npz without pickle."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .gaze import with_gaze

RESULT_VERSION = 1


@dataclass
class FaceResult:
    """One reconstruction. Geometry is in the face model's frame (ICT: cm, Y up, +Z forward);
    the camera pose maps it into the photo's OpenCV camera frame in millimetres:
    x_cam = rotation @ (AXES_ICT_TO_CV * 10 * x_ict) + translation, pixels = K @ x_cam.
    """

    identity: np.ndarray            # (100,) float32, unit-variance PCA coefficients
    expression: np.ndarray          # (53,) float32 in [0, 1], order of exp_names
    exp_names: np.ndarray           # (53,) str, ICT spelling
    neutral_vertices: np.ndarray    # (V, 3) float32 cm: the person's neutral shape (Basis)
    rotation: np.ndarray            # (3, 3) float32, model (OpenCV-axes) -> camera
    translation: np.ndarray         # (3,) float32 mm
    intrinsics: np.ndarray          # (3, 3) float32 K in pixels
    image_size: np.ndarray          # (2,) int32 (height, width) of the photo as fitted
    texture: np.ndarray             # (T, T, 3) uint8 photo texture in the ICT UV layout
    texture_mask: np.ndarray        # (T, T) uint8: 255 seen in the photo, 0 filled
    landmarks_detected: np.ndarray  # (478, 2) float32 pixels
    landmarks_fitted: np.ndarray    # (478, 2) float32 pixels, model reprojection
    arkit_scores: np.ndarray        # (52,) float32 MediaPipe blendshape scores
    arkit_names: np.ndarray         # (52,) str MediaPipe names (mouthSmileLeft)
    source_path: str = ""
    report: dict = field(default_factory=dict)  # stage seconds, device, errors...
    version: int = RESULT_VERSION
    # Detail (empty arrays when the detail stage did not run). Maps are in the ICT UV layout,
    # row 0 = v 1 (like the texture), values in metres along the surface normal.
    detail_static: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    detail_compressed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    detail_stretched: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # (53, V) per-vertex tension of each expression shape at weight 1 (negative = compressed).
    expression_tension: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    # (3,) float32 sRGB 0..1 of the irises in the photo (core.iris); empty when not seen.
    iris_rgb: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def has_detail(self) -> bool:
        return self.detail_static.size > 0

    def save(self, path: str | Path) -> None:
        _save_npz(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "FaceResult":
        return _load_npz(cls, path, "HiFace result")


@dataclass
class Track:
    """Per-frame expression and head pose tracked from a video, identity held fixed.

    Frame i of the arrays is source frame `frame_indices[i]` of the video.
    """

    expression: np.ndarray       # (F, 53) float32 in [0, 1], order of exp_names
    exp_names: np.ndarray        # (53,) str, ICT spelling
    rotation: np.ndarray         # (F, 3, 3) float32 model (OpenCV axes) -> camera
    translation: np.ndarray      # (F, 3) float32 mm
    confidence: np.ndarray       # (F,) float32 in [0, 1]; 0 where the frame was filled
    face_found: np.ndarray       # (F,) bool
    frame_indices: np.ndarray    # (F,) int32 source frame numbers
    fps: float                   # source frame rate
    intrinsics: np.ndarray       # (3, 3) float32
    image_size: np.ndarray       # (2,) int32 (height, width)
    source_path: str = ""
    report: dict = field(default_factory=dict)
    version: int = RESULT_VERSION
    # (F,) float64 presentation time of each frame in the video, seconds; empty in tracks from
    # before it was kept (and in ones built from frame numbers alone).
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_frames(self) -> int:
        return int(self.expression.shape[0])

    @property
    def times(self) -> np.ndarray:
        """(F,) seconds of each frame after the first: the video's own timing where the track
        has it (a variable frame rate stays in sync with the sound), else frame numbers / fps."""
        from .video import frame_times

        t, _ = frame_times(np.ravel(self.frame_indices), np.ravel(self.frame_times), self.fps)
        return t - t[0] if len(t) else t

    def save(self, path: str | Path) -> None:
        _save_npz(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "Track":
        return _load_npz(cls, path, "HiFace track")


def _save_npz(obj, path) -> None:
    arrays = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name == "report":
            v = json.dumps(v)
        arrays[f.name] = np.asarray(v)
    np.savez_compressed(path, **arrays)


def _load_npz(cls, path, what: str):
    """Load without pickle; fields with defaults may be absent (files from older versions)."""
    from dataclasses import MISSING

    try:
        with np.load(path, allow_pickle=False) as z:
            kw = {f.name: z[f.name] for f in fields(cls) if f.name in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable {what} file ({e})") from e
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = required - set(kw)
    if missing:
        raise ValueError(f"{path} is not a {what} file (missing {sorted(missing)[:3]})")
    for name, conv in (("source_path", str), ("version", int), ("fps", float)):
        if name in kw:
            kw[name] = conv(kw[name])
    if "report" in kw:
        kw["report"] = json.loads(str(kw["report"]))
    return cls(**kw)


# ICT axes (Y up, +Z forward) to OpenCV camera axes (Y down, +Z away from camera).
AXES_ICT_TO_CV = np.array([1.0, -1.0, -1.0], np.float32)


def posed_vertices(result: FaceResult, model) -> np.ndarray:
    """Full mesh with the fitted expression (the eyes turned by its eyeLook weights), in the
    photo's camera frame, mm (OpenCV axes)."""
    v = result.neutral_vertices + np.tensordot(result.expression, model.exp_basis, 1)
    v = with_gaze(v, result.expression, result.exp_names, getattr(model, "vertex_part", None))
    x = v * AXES_ICT_TO_CV * 10.0
    return (x @ result.rotation.T + result.translation).astype(np.float32)
