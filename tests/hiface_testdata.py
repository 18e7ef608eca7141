"""Where the tests find the real sample data (shared/ beside the checkout), and readers for it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GRID_DIR = SHARED / "samples" / "grid"
GRID_CLIPS = ("bbaf2n", "brbk7n", "lbax4n", "lwbsza", "swiz3n")


def read_grid_frames(clip: str, frames=(0, 37)) -> list[np.ndarray]:
    """RGB uint8 frames of a GRID clip (360x288), read with OpenCV."""
    import cv2
    path = GRID_DIR / f"{clip}.mpg"
    if not path.is_file():
        pytest.fail(f"GRID sample missing: {path}")
    cap = cv2.VideoCapture(str(path))
    out, i, want = [], 0, set(frames)
    try:
        while len(out) < len(want):
            ok, bgr = cap.read()
            if not ok:
                break
            if i in want:
                out.append(np.ascontiguousarray(bgr[:, :, ::-1]))
            i += 1
    finally:
        cap.release()
    assert len(out) == len(want), f"{clip}: read {len(out)} of {len(want)} frames"
    return out
