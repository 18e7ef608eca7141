"""Shared fixtures for the engine tests: real images, real model files, no stand-ins."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hiface_testdata import GRID_CLIPS, SHARED, read_grid_frames  # noqa: F401


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """The scikit-image astronaut: 512x512 RGB uint8, one face, public domain."""
    from skimage import data
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def grid_frames() -> dict[str, list[np.ndarray]]:
    return {c: read_grid_frames(c) for c in GRID_CLIPS}


@pytest.fixture(scope="session")
def landmarker_path() -> Path:
    """The MediaPipe Face Landmarker bundle: the installed data, else the shared mirror."""
    try:
        from hiface_blender.paths import landmarker_path as resolve
        return resolve()
    except Exception:
        p = SHARED / "assets" / "mediapipe" / "face_landmarker.task"
        if not p.is_file():
            pytest.fail("face_landmarker.task not found: run `python3 build.py setup`")
        return p


@pytest.fixture(scope="session")
def face_model_data():
    """The converted face model (FaceModelData) written by `build.py setup`."""
    from hiface_blender.core.errors import HiFaceError
    from hiface_blender.core.model_data import FaceModelData
    from hiface_blender.paths import face_model_path

    try:
        return FaceModelData.load(face_model_path())
    except HiFaceError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def reconstructor():
    """The real engine, standard quality on the CPU, one per test module."""
    from hiface_blender import evaluate

    rec = evaluate.make_reconstructor(quality="standard", device="cpu")
    yield rec
    rec.close()
