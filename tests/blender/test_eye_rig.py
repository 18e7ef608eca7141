"""The eye rig: the eyeballs turn with the eyeLook keys, as the engine poses them."""
from __future__ import annotations

import math

import numpy as np
import pytest

import bpy

from hiface_blender.blender import detail_rig as dr
from hiface_blender.blender import eye_rig
from hiface_blender.blender.build import build_face_object, ict_to_blender
from hiface_blender.core import gaze
from hiface_testdata import evaluated_vertices


def _evaluated(obj):
    bpy.context.view_layer.update()
    return evaluated_vertices(obj)


def _engine_pose(result, model, obj):
    """The engine's eyes for the object's current key values, in object space."""
    names = [str(n) for n in model.exp_names]
    keys = obj.data.shape_keys.key_blocks
    e = np.array([keys[n].value for n in names])
    v = result.neutral_vertices.astype(np.float64) + np.tensordot(e, model.exp_basis, 1)
    v = gaze.turn_eyes(v, model.vertex_part, gaze.eye_angles(e, names))
    return ict_to_blender(v, np.asarray(obj["hiface_origin_cm"]))


def _angle_deg(v_now, v_rest, idx):
    c = gaze.sphere_centre(v_rest[idx])
    apex = idx[v_rest[idx, 1].argmin()]          # the front: Blender faces -Y
    a, b = v_rest[apex] - c, v_now[apex] - c
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


def test_eyes_follow_the_look_keys(face_model, result_factory):
    result = result_factory(seed=3)
    obj = build_face_object(result, face_model, name="Gaze", detail=False)
    assert obj.modifiers[0].name == eye_rig.MOD_EYES
    keys = obj.data.shape_keys.key_blocks
    for kb in keys[1:]:
        kb.value = 0.0
    left, right = gaze.eye_vertices(face_model.vertex_part)
    eyes = np.r_[left, right]
    rest = _evaluated(obj)
    np.testing.assert_allclose(rest[eyes], _engine_pose(result, face_model, obj)[eyes], atol=1e-6)

    # The face looks to its left: both eyes turn by "Gaze Sideways", as the engine turns them.
    keys["eyeLookOut_L"].value = keys["eyeLookIn_R"].value = 1.0
    v = _evaluated(obj)
    np.testing.assert_allclose(v[eyes], _engine_pose(result, face_model, obj)[eyes], atol=1e-6)
    for idx in (left, right):
        assert _angle_deg(v, rest, idx) == pytest.approx(gaze.GAZE_DEGREES["sideways"], abs=0.2)
        assert v[idx, 0].mean() > rest[idx, 0].mean() + 1e-4        # towards +X, its left
    # Rigid: the eyeball keeps its shape.
    a, b = left[:-3:29], left[3::29]
    np.testing.assert_allclose(np.linalg.norm(v[a] - v[b], axis=1),
                               np.linalg.norm(rest[a] - rest[b], axis=1), atol=1e-6)

    # The artist's angle: 20 degrees instead of 30.
    obj[eye_rig.GAZE_PROPS["sideways"]] = math.radians(20.0)
    obj.update_tag()
    assert _angle_deg(_evaluated(obj), rest, left) == pytest.approx(20.0, abs=0.2)

    # Keyframed keys turn the eyes on playback (drivers, no frame handler).
    keys["eyeLookOut_L"].value = keys["eyeLookIn_R"].value = 0.0
    kb = keys["eyeLookDown_R"]
    kb.value = 0.0
    kb.keyframe_insert("value", frame=1)
    kb.value = 1.0
    kb.keyframe_insert("value", frame=11)
    scene = bpy.context.scene
    for frame, expect in ((1, 0.0), (6, 0.5), (11, 1.0)):
        scene.frame_set(frame)
        v = evaluated_vertices(obj)
        assert _angle_deg(v, rest, right) == pytest.approx(
            expect * gaze.GAZE_DEGREES["down"], abs=0.3)
        assert v[right, 2].mean() <= rest[right, 2].mean() + 1e-9     # down: -Z
        assert _angle_deg(v, rest, left) < 1e-3

    # Simple expressions: the eyes also turn with Python scripts disabled.
    drivers = [fc for fc in obj.animation_data.drivers if eye_rig.MOD_EYES in fc.data_path]
    assert len(drivers) == 4
    assert all(fc.driver.is_simple_expression and fc.driver.is_valid for fc in drivers)


def test_eye_rig_sits_before_the_detail_rig_and_outlives_its_removal(face_model, result_factory):
    result = result_factory(seed=4)
    obj = build_face_object(result, face_model, name="Gaze", detail=False)
    rng = np.random.default_rng(0)
    maps = [rng.normal(0, 1e-4, (64, 64)).astype(np.float32) for _ in range(3)]
    dr.add_detail_rig(obj, *maps)
    assert [m.name for m in obj.modifiers] == [eye_rig.MOD_EYES, *dr.RIG_MODIFIERS]
    # A rigid turn changes no edge length: no tension on the eyeballs.
    for kb in obj.data.shape_keys.key_blocks[1:]:
        kb.value = 0.0
    obj.data.shape_keys.key_blocks["eyeLookUp_L"].value = 1.0
    for m in obj.modifiers:
        m.show_viewport = m.name in (eye_rig.MOD_EYES, dr.MOD_TENSION)
    bpy.context.view_layer.update()
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    me = ev.to_mesh()
    w = np.empty(len(me.vertices), np.float32)
    me.attributes[dr.COMPRESSION_ATTRIBUTE].data.foreach_get("value", w)
    ev.to_mesh_clear()
    left, _ = gaze.eye_vertices(face_model.vertex_part)
    # float32 rounding of the turned points: a few 1e-6 of an edge's length, x 20 in the weight.
    assert w[left].max() < 1e-3
    dr.remove_detail_rig(obj)
    assert [m.name for m in obj.modifiers] == [eye_rig.MOD_EYES]
    assert len(obj.animation_data.drivers) == 4
    eye_rig.remove_eye_rig(obj)
    assert not obj.modifiers and not obj.animation_data.drivers
