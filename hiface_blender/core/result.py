"""Plain result types of the engine, saved and loaded as .npz without pickle."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

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

    def save(self, path: str | Path) -> None:
        arrays = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "report":
                v = json.dumps(v)
            arrays[f.name] = np.asarray(v)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "FaceResult":
        with np.load(path, allow_pickle=False) as z:
            kw = {f.name: z[f.name] for f in fields(cls) if f.name in z.files}
        missing = {f.name for f in fields(cls)} - set(kw)
        if missing:
            raise ValueError(f"{path} is not a HiFace result (missing {sorted(missing)[:3]})")
        kw["source_path"] = str(kw["source_path"])
        kw["report"] = json.loads(str(kw["report"]))
        kw["version"] = int(kw["version"])
        return cls(**kw)


# ICT axes (Y up, +Z forward) to OpenCV camera axes (Y down, +Z away from camera).
AXES_ICT_TO_CV = np.array([1.0, -1.0, -1.0], np.float32)


def posed_vertices(result: FaceResult, model) -> np.ndarray:
    """Full mesh with the fitted expression, in the photo's camera frame, mm (OpenCV axes)."""
    v = result.neutral_vertices + np.tensordot(result.expression, model.exp_basis, 1)
    x = v * AXES_ICT_TO_CV * 10.0
    return (x @ result.rotation.T + result.translation).astype(np.float32)
