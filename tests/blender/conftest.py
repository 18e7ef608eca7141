"""Blender fixtures: a factory-fresh scene per test, the face model, a plausible FaceResult."""
from __future__ import annotations


import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402  (ships with bpy)

@pytest.fixture(autouse=True)
def fresh_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


@pytest.fixture
def addon(fresh_scene):
    """The add-on enabled as a user would; yields the job runner, stopped before disabling."""
    from hiface_blender.ui import jobs
    addon_utils.enable("hiface_blender", default_set=True, handle_error=_raise)
    yield jobs
    jobs.stop()
    addon_utils.disable("hiface_blender", default_set=True, handle_error=_raise)


def _raise(exc):
    raise exc


@pytest.fixture(scope="session")
def face_model():
    from hiface_blender import paths
    from hiface_blender.core.errors import HiFaceError
    from hiface_blender.core.model_data import FaceModelData

    try:
        return FaceModelData.load(paths.face_model_path())
    except HiFaceError as e:
        pytest.fail(f"{e}")


def make_result(model, *, seed: int = 0, size=(480, 640), texture_size: int = 256):
    """A FaceResult with a random identity, a sparse expression, a slightly turned head
    in front of a camera, and a smooth texture. Deterministic for a seed."""
    from hiface_blender.core.result import FaceResult

    rng = np.random.default_rng(seed)
    n_id = model.id_basis.shape[0]
    identity = rng.normal(0, 1, n_id).astype(np.float32)
    neutral = model.neutral + np.tensordot(identity, model.id_basis, 1)
    n_exp = model.exp_basis.shape[0]
    expression = np.zeros(n_exp, np.float32)
    on = rng.choice(n_exp, 6, replace=False)
    expression[on] = rng.uniform(0.2, 0.9, 6)
    yaw, pitch = np.radians(20.0), np.radians(-8.0)
    ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    h, w = size
    k = np.array([[1.3 * w, 0, 0.47 * w], [0, 1.3 * w, 0.53 * h], [0, 0, 1]], np.float32)
    t = np.array([12.0, -20.0, 600.0], np.float32)
    yy, xx = np.mgrid[0:texture_size, 0:texture_size] / texture_size
    tex = np.stack([180 + 40 * xx, 130 + 30 * yy, 110 + 20 * xx * yy], -1).astype(np.uint8)
    names = np.asarray(model.exp_names)
    return FaceResult(
        identity=identity, expression=expression, exp_names=names,
        neutral_vertices=neutral.astype(np.float32),
        rotation=(rx @ ry).astype(np.float32), translation=t, intrinsics=k,
        image_size=np.array([h, w], np.int32), texture=tex,
        texture_mask=np.full((texture_size, texture_size), 255, np.uint8),
        landmarks_detected=np.zeros((478, 2), np.float32),
        landmarks_fitted=np.zeros((478, 2), np.float32),
        arkit_scores=np.zeros(52, np.float32), arkit_names=np.array(["x"] * 52),
        source_path="/photos/someone.jpg", report={"device": "cpu"},
    )


@pytest.fixture
def face_result(face_model):
    return make_result(face_model)


def _data_names() -> dict[str, set[str]]:
    kinds = ("objects", "meshes", "materials", "images", "cameras", "shape_keys",
             "collections", "worlds", "node_groups")
    return {k: set(getattr(bpy.data, k).keys()) for k in kinds}


@pytest.fixture
def data_names():
    """Call it to get the names of every datablock kind a reconstruction could create."""
    return _data_names


@pytest.fixture
def result_factory(face_model):
    return lambda **kw: make_result(face_model, **kw)
