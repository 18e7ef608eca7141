"""Detail transfer between two built faces from real reconstructions (the astronaut drives a
GRID speaker): shape-key values and action, the dynamic maps in the target's rig, errors that
change nothing, the operator and its undo."""
from __future__ import annotations

import numpy as np
import pytest

import bpy

from hiface_blender.blender import detail_rig as dr
from hiface_blender.blender.build import build_face_object
from hiface_blender.blender.transfer import transfer_detail
from hiface_testdata import evaluated_vertices, read_grid_frames

SMILE = {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0, "eyeSquint_L": 1.0, "eyeSquint_R": 1.0}


@pytest.fixture(scope="module")
def pair(astronaut_png):
    from hiface_blender.core.imageio import load_photo
    from hiface_blender.core.reconstruct import ReconstructSettings, Reconstructor

    rec = Reconstructor(ReconstructSettings(device="cpu", detail=True))
    try:
        source = rec.run(load_photo(astronaut_png).rgb, source_path=str(astronaut_png))
        target = rec.run(read_grid_frames("bbaf2n", frames=(0,))[0], source_path="bbaf2n.mpg")
    finally:
        rec.close()
    assert source.has_detail and target.has_detail
    return source, target


def _faces(pair, model):
    src = build_face_object(pair[0], model, name="Source")
    dst = build_face_object(pair[1], model, name="Target")
    assert dr.is_rigged(src) and dr.is_rigged(dst)
    return src, dst


def _set_keys(obj, values):
    for kb in obj.data.shape_keys.key_blocks[1:]:
        kb.value = values.get(kb.name, 0.0)


def _evaluated(obj):
    bpy.context.view_layer.update()
    return evaluated_vertices(obj)


def _key_values(obj):
    return {kb.name: kb.value for kb in obj.data.shape_keys.key_blocks[1:]}


def _snapshot():
    kinds = ("objects", "meshes", "materials", "images", "shape_keys", "actions", "node_groups",
             "textures")
    return {k: sorted(getattr(bpy.data, k).keys()) for k in kinds}


def test_target_shows_the_source_wrinkles_and_keys(pair, face_model):
    source, target = pair
    src, dst = _faces(pair, face_model)
    _set_keys(src, SMILE)
    _set_keys(dst, SMILE)
    static_before = dst.modifiers[dr.MOD_STATIC].texture.image
    before = _evaluated(dst)

    transfer_detail(src, dst)
    after = _evaluated(dst)
    assert np.abs(after - before).max() > 1e-5, "the dynamic offset did not change"
    assert dst.modifiers[dr.MOD_STATIC].texture.image == static_before
    # Exactly the target with the source's dynamic maps.
    ref = build_face_object(target, face_model, name="Reference", detail=False)
    dr.add_detail_rig(ref, target.detail_static, source.detail_compressed,
                      source.detail_stretched)
    _set_keys(ref, SMILE)
    np.testing.assert_allclose(after, _evaluated(ref), atol=1e-6)
    # One dynamic image per face, named for the target; the old one is gone.
    assert [i.name for i in bpy.data.images if i.name.startswith("Target Detail Dynamic")] \
        == ["Target Detail Dynamic"]
    # Dynamic Detail 0 gives back the target's own static-only mesh.
    dr.set_detail(dst, dynamic=0.0)
    dr.set_detail(ref, dynamic=0.0)
    np.testing.assert_allclose(_evaluated(dst), _evaluated(ref), atol=1e-6)


def test_key_values_and_action_are_copied(pair, face_model):
    src, dst = _faces(pair, face_model)
    _set_keys(src, {"jawOpen": 0.7, "mouthSmile_L": 0.3})
    kb = src.data.shape_keys.key_blocks["jawOpen"]
    kb.keyframe_insert("value", frame=1)
    kb.value = 0.1
    kb.keyframe_insert("value", frame=10)
    action = src.data.shape_keys.animation_data.action
    kb.value = 0.7

    transfer_detail(src, dst)
    assert _key_values(dst) == pytest.approx(_key_values(src))
    assert dst.data.shape_keys.animation_data.action == action
    bpy.context.scene.frame_set(10)
    assert dst.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.1)
    bpy.context.scene.frame_set(1)
    assert dst.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.7)


def test_options_leave_parts_alone(pair, face_model):
    src, dst = _faces(pair, face_model)
    _set_keys(src, {"jawOpen": 0.5})
    keys = _key_values(dst)
    image = dst.modifiers[dr.MOD_DYNAMIC][dr.socket_id(dr.dynamic_node_group(), "Maps")]
    transfer_detail(src, dst, expressions=False, dynamic_maps=False)
    assert _key_values(dst) == keys
    assert dst.modifiers[dr.MOD_DYNAMIC][dr.socket_id(dr.dynamic_node_group(), "Maps")] == image


def test_errors_change_nothing(pair, face_model):
    src, dst = _faces(pair, face_model)
    plain = bpy.data.objects.new("Plain", bpy.data.meshes.new("Plain"))
    bpy.context.scene.collection.objects.link(plain)
    unrigged = build_face_object(pair[1], face_model, name="Unrigged", detail=False)
    _set_keys(src, SMILE)
    before, keys = _snapshot(), _key_values(dst)
    for a, b, match in ((src, src, "both the source and the target"),
                        (plain, dst, "not a HiFace face"), (src, plain, "not a HiFace face"),
                        (unrigged, dst, "no detail rig"), (src, unrigged, "no detail rig")):
        with pytest.raises(ValueError, match=match):
            transfer_detail(a, b)
        assert _snapshot() == before
        assert _key_values(dst) == keys


def test_operator_with_selection_and_undo(addon, pair, face_model):
    src, dst = _faces(pair, face_model)
    _set_keys(src, SMILE)
    for o in bpy.context.scene.objects:
        o.select_set(False)
    bpy.context.view_layer.objects.active = dst
    dst.select_set(True)
    # Only the target selected: refused, nothing changes.
    before = _snapshot()
    with pytest.raises(RuntimeError, match="Select exactly one"):
        bpy.ops.hiface.transfer_detail()
    assert _snapshot() == before

    src.select_set(True)
    bpy.ops.ed.undo_push(message="Before")
    keys_before = _key_values(dst)
    assert bpy.ops.hiface.transfer_detail("EXEC_DEFAULT", True) == {"FINISHED"}
    dst = bpy.data.objects["Target"]
    assert _key_values(dst) == pytest.approx(SMILE | {k: 0.0 for k in keys_before
                                                      if k not in SMILE})
    bpy.ops.ed.undo()
    dst = bpy.data.objects["Target"]
    assert _key_values(dst) == pytest.approx(keys_before)
    assert _snapshot() == before


def test_key_drivers_are_copied(pair, face_model):
    src, dst = _faces(pair, face_model)
    ctrl = bpy.data.objects.new("Control", None)
    bpy.context.scene.collection.objects.link(ctrl)
    fc = src.data.shape_keys.key_blocks["jawOpen"].driver_add("value")
    var = fc.driver.variables.new()
    var.name, var.type = "z", "TRANSFORMS"
    var.targets[0].id = ctrl
    var.targets[0].transform_type = "LOC_Z"
    fc.driver.expression = "z * 0.5"
    ctrl.location.z = 1.2
    bpy.context.view_layer.update()
    assert src.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.6)
    assert dst.data.shape_keys.key_blocks["jawOpen"].value != pytest.approx(0.6)

    transfer_detail(src, dst)
    ctrl.location.z = 0.8
    bpy.context.scene.frame_set(bpy.context.scene.frame_current)
    bpy.context.view_layer.update()
    for obj in (src, dst):
        assert obj.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.4)
    drv = dst.data.shape_keys.animation_data.drivers
    assert [d.data_path for d in drv] == ['key_blocks["jawOpen"].value']
    # And the dynamic detail follows the driven key on the target.
    ref = _evaluated(dst)
    ctrl.location.z = 0.0
    bpy.context.view_layer.update()
    assert dst.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(0.0)
    assert np.abs(_evaluated(dst) - ref).max() > 1e-4
