"""Gaze: the eyeballs turn with the eyeLook expressions.

ICT's eyeLook shapes move only the lids and the skin around the eyes; its eyeballs have no
expression motion, so on their own the irises would stare ahead while the lids follow the
gaze. Here each eyeball turns rigidly about its own centre by an angle proportional to its
eyeLook weights: in/out turn it about the head's vertical axis, up/down about the horizontal
one (up/down first, then sideways, as Blender's XYZ Euler does, so the engine and the Blender
rig pose the eyes alike).

Degrees at a weight of 1 (`GAZE_DEGREES`):
- up 16 and down 31: where ICT's eyeLookUp / eyeLookDown lids sit on the turned eye as they do
  on the eye looking ahead (the upper lid's margin moves 3.5 mm up and 7.7 mm down, on the
  inner ball at 14.4 mm from the centre, with the iris edge 0.42 rad off the axis);
- sideways 30: MediaPipe's landmarker then reads the weights back from renders of the model
  (both directions, four faces turned up to 10 degrees: 0.30 / 0.63 / 0.85 on average at
  0.3 / 0.6 / 0.9; 25 degrees read 0.84x the weight). Its up and down scores saturate early
  (0.9 down reads 0.6, up 0.15-0.5), so the lids set those two.

numpy only: the Blender side uses it too.
"""
from __future__ import annotations

import numpy as np

from .model_data import PARTS

GAZE_DEGREES = {"sideways": 30.0, "up": 16.0, "down": 31.0}

_PART_NAMES = [p[0] for p in PARTS]
EYE_PARTS = (_PART_NAMES.index("eyeball_l"), _PART_NAMES.index("eyeball_r"))
SIDES = ("L", "R")


def sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares centre of a sphere through the points."""
    p = np.asarray(points, np.float64)
    a = np.c_[2.0 * p, np.ones(len(p))]
    return np.linalg.lstsq(a, (p * p).sum(1), rcond=None)[0][:3]


def eye_vertices(vertex_part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the left and right eyeballs' vertices (empty without part labels)."""
    if vertex_part is None:
        empty = np.zeros(0, np.int64)
        return empty, empty
    part = np.asarray(vertex_part)
    return tuple(np.flatnonzero(part == p) for p in EYE_PARTS)


def eye_centres(vertices: np.ndarray, vertex_part: np.ndarray) -> np.ndarray:
    """(2, 3) centres of the left and right eyeballs, in the vertices' own frame."""
    return np.stack([sphere_centre(np.asarray(vertices)[idx]) for idx in eye_vertices(vertex_part)])


def eye_angles(expression, exp_names, degrees: dict | None = None) -> np.ndarray:
    """(2, 2) radians, rows left and right eye: (towards the face's own left, up).

    A right eye looking in turns towards the face's left; a left eye looking in, towards its
    right. Weights are clipped to 0..1 as the shape-key sliders are."""
    deg = {**GAZE_DEGREES, **(degrees or {})}
    names = [str(n) for n in np.asarray(exp_names).ravel()]
    e = np.asarray(expression, np.float64).ravel()

    def w(name):
        return float(np.clip(e[names.index(name)], 0.0, 1.0)) if name in names else 0.0

    out = np.zeros((2, 2))
    for i, side in enumerate(SIDES):
        look_in, look_out = w(f"eyeLookIn_{side}"), w(f"eyeLookOut_{side}")
        towards_left = look_out - look_in if side == "L" else look_in - look_out
        out[i, 0] = np.radians(deg["sideways"]) * towards_left
        out[i, 1] = (np.radians(deg["up"]) * w(f"eyeLookUp_{side}")
                     - np.radians(deg["down"]) * w(f"eyeLookDown_{side}"))
    return out


def eye_rotation(towards_left: float, up: float) -> np.ndarray:
    """3x3 rotation in ICT axes (x the face's left, y up, z forward): up first, then sideways."""
    cy, sy = np.cos(towards_left), np.sin(towards_left)
    cp, sp = np.cos(up), np.sin(up)
    yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    return yaw @ pitch


def turn_eyes(vertices: np.ndarray, vertex_part: np.ndarray, angles: np.ndarray,
              centres: np.ndarray | None = None) -> np.ndarray:
    """A copy of the (V, 3) ICT-frame vertices with each eyeball turned about its centre by
    `angles` (as from eye_angles). The centres default to the eyeballs' own."""
    v = np.array(vertices, copy=True)
    angles = np.asarray(angles, np.float64)
    if not np.any(angles):
        return v
    for i, idx in enumerate(eye_vertices(vertex_part)):
        if len(idx) < 4 or not np.any(angles[i]):
            continue
        c = sphere_centre(v[idx]) if centres is None else np.asarray(centres[i], np.float64)
        rot = eye_rotation(*angles[i])
        v[idx] = ((v[idx].astype(np.float64) - c) @ rot.T + c).astype(v.dtype)
    return v


def with_gaze(vertices: np.ndarray, expression, exp_names, vertex_part) -> np.ndarray:
    """The vertices of a posed face (ICT frame) with the eyeballs turned by its eyeLook weights."""
    return turn_eyes(vertices, vertex_part, eye_angles(expression, exp_names))
