"""The face builder on the real face model: topology, units, axes, shape keys, materials."""
from __future__ import annotations

import time

import numpy as np
import pytest

import bpy

from hiface_blender.blender.build import build_face_object, ict_to_blender
from hiface_blender.core import gaze
from hiface_blender.core.model_data import PARTS


def _co(obj, key=None):
    n = len(obj.data.vertices)
    a = np.empty(n * 3, np.float32)
    if key is None:
        obj.data.vertices.foreach_get("co", a)
    else:
        obj.data.shape_keys.key_blocks[key].points.foreach_get("co", a)
    return a.reshape(n, 3)


def _evaluated_co(obj):
    dg = bpy.context.evaluated_depsgraph_get()
    me = obj.evaluated_get(dg).to_mesh()
    a = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", a)
    obj.evaluated_get(dg).to_mesh_clear()
    return a.reshape(-1, 3)


def test_build_geometry_units_and_axes(face_model, face_result):
    t0 = time.perf_counter()
    obj = build_face_object(face_result, face_model, name="Someone")
    print(f"\nbuild_face_object: {time.perf_counter() - t0:.3f} s")
    me = obj.data
    v = face_model.neutral.shape[0]
    assert len(me.vertices) == v == 26719
    assert len(me.polygons) == len(face_model.poly_start)
    assert len(me.loops) == len(face_model.loop_vert)
    assert not me.validate(verbose=False), "mesh needed corrections"
    assert obj.name in bpy.context.scene.collection.objects

    co = _co(obj)
    face = np.asarray(face_model.vertex_part) == [p[0] for p in PARTS].index("face")
    # Metres: a head is a couple of decimetres tall, not tens of units.
    ext = co[: 11248].max(0) - co[: 11248].min(0)
    assert 0.15 < ext[0] < 0.4 and 0.15 < ext[2] < 0.5, ext
    # The face looks along -Y: the nose tip (front-most ICT vertex) is the most negative Y.
    nose = int(np.argmax(face_result.neutral_vertices[face, 2]))
    assert np.argmin(co[face, 1]) == nose
    # Z up: the top of the head is above the chin and eyes.
    eyes = np.asarray(face_model.vertex_part) == [p[0] for p in PARTS].index("eyeball_l")
    assert co[: 11248, 2].max() > co[eyes, 2].mean() > co[face, 2].min()
    # Origin between the ears: the face part's x-extremes are symmetric about it.
    fx = co[face]
    left, right = fx[fx[:, 0].argmin()], fx[fx[:, 0].argmax()]
    np.testing.assert_allclose((left + right) / 2, 0.0, atol=1e-4)
    # Same conversion as the documented one.
    np.testing.assert_allclose(co[nose] - co[0], ict_to_blender(
        face_result.neutral_vertices[nose] - face_result.neutral_vertices[0]), atol=1e-6)


def test_shape_keys(face_model, face_result):
    obj = build_face_object(face_result, face_model)
    keys = obj.data.shape_keys.key_blocks
    names = [str(n) for n in face_model.exp_names]
    assert [k.name for k in keys] == ["Basis"] + names
    assert len(names) == 53 and "mouthSmile_L" in names
    for k, kb in enumerate(keys[1:]):
        assert kb.slider_min == 0.0 and kb.slider_max == 1.0
        assert kb.value == pytest.approx(float(face_result.expression[k]), abs=1e-6)
        assert kb.relative_key == keys[0]

    basis = _co(obj, "Basis")
    np.testing.assert_array_equal(basis, _co(obj))
    # Each key is the neutral plus its ICT offset, in metres.
    for name in ("jawOpen", "mouthSmile_L", "eyeBlink_R"):
        i = names.index(name)
        np.testing.assert_allclose(_co(obj, name) - basis, ict_to_blender(face_model.exp_basis[i]),
                                   atol=2e-7)
    # The object first shows the photo's expression (its eyes turned by the eyeLook keys) ...
    expected = basis + np.tensordot(face_result.expression,
                                    ict_to_blender(face_model.exp_basis), 1)
    angles = gaze.eye_angles(face_result.expression, face_model.exp_names)
    assert np.abs(angles).max() > 0.05        # this result looks away: the eyes must turn
    posed_ict = face_result.neutral_vertices + np.tensordot(face_result.expression,
                                                            face_model.exp_basis, 1)
    turned = ict_to_blender(gaze.turn_eyes(posed_ict, face_model.vertex_part, angles),
                            np.asarray(obj["hiface_origin_cm"]))
    eyes = np.concatenate(gaze.eye_vertices(face_model.vertex_part))
    expected[eyes] = turned[eyes]
    np.testing.assert_allclose(_evaluated_co(obj), expected, atol=1e-5)
    # ... and zeroing every key gives the person's neutral.
    for kb in keys[1:]:
        kb.value = 0.0
    np.testing.assert_allclose(_evaluated_co(obj), basis, atol=1e-7)


def test_uvs_materials_properties(face_model, face_result):
    obj = build_face_object(face_result, face_model, name="Someone")
    me = obj.data
    assert me.uv_layers.active is not None and me.uv_layers.active.name == "UVMap"
    uv = np.empty(len(me.loops) * 2, np.float32)
    me.uv_layers["UVMap"].uv.foreach_get("vector", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), face_model.uvs[face_model.loop_uv])

    ict = [str(n) for n in face_model.material_names]
    assert [m["hiface_ict_material"] for m in me.materials] == ict
    assert len({m.name for m in me.materials}) == len(ict)
    mi = np.empty(len(me.polygons), np.int32)
    me.polygons.foreach_get("material_index", mi)
    np.testing.assert_array_equal(mi, face_model.poly_material)
    smooth = np.empty(len(me.polygons), bool)
    me.polygons.foreach_get("use_smooth", smooth)
    assert smooth.all()

    skin = me.materials[ict.index("M_Face")]
    tex_nodes = [n for n in skin.node_tree.nodes if n.type == "TEX_IMAGE"]
    assert len(tex_nodes) == 1
    img = tex_nodes[0].image
    assert img.packed_file is not None and img.colorspace_settings.name == "sRGB"
    t = face_result.texture
    assert tuple(img.size) == (t.shape[1], t.shape[0])
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(t.shape[0], t.shape[1], 4)
    # Top row of the texture array is the top of the Blender image (last row of pixels).
    np.testing.assert_allclose(px[-1, :, :3] * 255, t[0], atol=0.6)
    principled = next(n for n in skin.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert principled.inputs["Subsurface Weight"].default_value > 0
    assert principled.inputs["Base Color"].is_linked

    eye = np.empty(len(me.vertices), np.float32)
    me.attributes["hiface_eye"].data.foreach_get("value", eye)
    iris = eye[22221:23021]
    assert iris.max() == pytest.approx(1.0) and iris.min() < 0.2   # pupil centre to limbus
    assert (eye[:21451] == 2.0).all()                               # not an eyeball

    assert obj["hiface"] == 1
    assert obj["hiface_source"] == "/photos/someone.jpg"
    np.testing.assert_allclose(obj["hiface_identity"], face_result.identity, atol=1e-6)
    np.testing.assert_allclose(obj["hiface_expression"], face_result.expression, atol=1e-6)
    np.testing.assert_allclose(np.reshape(obj["hiface_intrinsics"], (3, 3)),
                               face_result.intrinsics, atol=1e-4)
    assert list(obj["hiface_image_size"]) == [480, 640]


def test_build_failure_leaves_nothing(face_model, face_result, data_names):
    before = data_names()
    face_result.texture = np.zeros((4, 4, 4), np.uint8)  # not RGB: fails mid-build
    with pytest.raises(ValueError):
        build_face_object(face_result, face_model)
    assert data_names() == before


def _iris_middle(obj):
    """The linear colour at the middle stop of the left iris material's ramp."""
    mat = next(m for m in obj.data.materials if m["hiface_ict_material"] == "M_IrisLeft")
    ramp = next(n for n in mat.node_tree.nodes if n.type == "VALTORGB")
    return np.array(sorted(ramp.color_ramp.elements, key=lambda e: e.position)[3].color[:3])


def test_iris_takes_the_colour_measured_in_the_photo(face_model, result_factory):
    from hiface_blender.blender import materials

    blue = result_factory(seed=5)
    blue.iris_rgb = np.array([0.25, 0.42, 0.58], np.float32)
    got = _iris_middle(build_face_object(blue, face_model, name="Blue", detail=False))
    np.testing.assert_allclose(got, materials.srgb_to_linear(blue.iris_rgb), rtol=1e-5)
    assert got[2] > got[1] > got[0]
    # Not measured (a closed eye, a tiny face, an older result): the default brown.
    unseen = result_factory(seed=5)
    assert unseen.iris_rgb.size == 0
    got = _iris_middle(build_face_object(unseen, face_model, name="Unseen", detail=False))
    np.testing.assert_allclose(got, materials.DEFAULT_IRIS, rtol=1e-5)
