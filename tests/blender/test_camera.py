"""The photo camera: Blender's projection of the face equals K (R x + t) from the fit."""
from __future__ import annotations

import numpy as np
import pytest

import bpy
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Euler, Vector

from hiface_blender.blender.build import add_photo_camera, build_face_object
from hiface_blender.core.result import posed_vertices
from hiface_testdata import evaluated_vertices


def _blender_pixels(scene, cam, points_world):
    w, h = scene.render.resolution_x, scene.render.resolution_y
    out = []
    for p in points_world:
        ndc = world_to_camera_view(scene, cam, Vector(p))
        # NDC spans the whole frame; OpenCV puts pixel centres on integers.
        out.append((ndc.x * w - 0.5, (1.0 - ndc.y) * h - 0.5))
    return np.array(out)


def _fitted_pixels(result, model, idx):
    x = posed_vertices(result, model)[idx].astype(np.float64)
    uvw = x @ np.asarray(result.intrinsics, np.float64).T
    return uvw[:, :2] / uvw[:, 2:]


def _world_points(obj, idx):
    m = np.array(obj.matrix_world)
    co = evaluated_vertices(obj)[idx].astype(np.float64)
    return co @ m[:3, :3].T + m[:3, 3]


@pytest.mark.parametrize("size", [(480, 640), (900, 600), (512, 512)])
def test_camera_overlays_photo(face_model, result_factory, size):
    result = result_factory(size=size, seed=size[0])
    obj = build_face_object(result, face_model)
    cam = add_photo_camera(result, obj)
    scene = bpy.context.scene
    assert scene.camera == cam
    assert (scene.render.resolution_x, scene.render.resolution_y) == (size[1], size[0])

    idx = np.array(list(face_model.landmarks68) + [0, 5000, 9000, 12000, 22000])
    expected = _fitted_pixels(result, face_model, idx)
    got = _blender_pixels(scene, cam, _world_points(obj, idx))
    err = np.abs(got - expected).max()
    print(f"\n{size}: max camera disagreement {err:.4f} px")
    assert err < 0.5
    # The face is actually in the frame, not trivially agreeing off-screen.
    assert (expected > 0).all() and (expected[:, 0] < size[1]).all() and (expected[:, 1] < size[0]).all()


def test_camera_follows_moved_and_scaled_face(face_model, face_result):
    obj = build_face_object(face_result, face_model)
    obj.location = (1.5, -2.0, 0.7)
    obj.rotation_euler = Euler((0.3, -0.2, 1.1))
    obj.scale = (2.0, 2.0, 2.0)
    bpy.context.view_layer.update()
    cam = add_photo_camera(face_result, obj)
    assert tuple(cam.scale) == pytest.approx((1.0, 1.0, 1.0))
    idx = np.asarray(face_model.landmarks68)
    got = _blender_pixels(bpy.context.scene, cam, _world_points(obj, idx))
    assert np.abs(got - _fitted_pixels(face_result, face_model, idx)).max() < 0.5


def test_render_still_lays_face_over_photo(face_model, result_factory, tmp_path):
    from hiface_blender.blender.build import render_still

    result = result_factory(size=(120, 160), seed=3)
    obj = build_face_object(result, face_model)
    add_photo_camera(result, obj)
    scene = bpy.context.scene
    out = render_still(scene, tmp_path / "render.png", samples=4)
    img = bpy.data.images.load(str(out))
    assert tuple(img.size) == (160, 120)
    px = np.empty(160 * 120 * 4, np.float32)
    img.pixels.foreach_get(px)
    alpha = px.reshape(120, 160, 4)[::-1, :, 3]       # top row first, like the photo
    # Covered exactly where the fitted face projects: inside the landmark hull, not far away.
    lm = _fitted_pixels(result, face_model, np.asarray(face_model.landmarks68))
    cx, cy = np.round(lm.mean(0)).astype(int)
    assert alpha[cy, cx] > 0.99
    assert alpha[0, 0] == 0.0 and alpha[-1, -1] == 0.0 and alpha[0, -1] == 0.0
    rgb = px.reshape(120, 160, 4)[::-1, :, :3][cy, cx]
    assert rgb.max() > 0.2, "the face rendered black: no light or no texture"
