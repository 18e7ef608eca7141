"""The detail rig on a real reconstruction (astronaut photo, detail maps from the engine):
live tension weights, the slider equalities, playback cost, the material hook-up."""
from __future__ import annotations

import numpy as np
import pytest

import bpy

from hiface_blender.blender import detail_rig as dr
from hiface_blender.blender import eye_rig
from hiface_blender.blender.build import build_face_object, ict_to_blender
from hiface_testdata import evaluated_vertices

# MediaPipe landmarks (subject's left = ICT +X = Blender +X).
EYE_OUTER_L, EYE_OUTER_R = 263, 33
CHEEK_L, CHEEK_R = 425, 205
LOWER_LIP, CHIN_FRONT = 17, 200


@pytest.fixture(scope="session")
def detail_result(astronaut_png):
    """One real reconstruction with detail for the whole session (a few seconds)."""
    from hiface_blender.core.imageio import load_photo
    from hiface_blender.core.reconstruct import ReconstructSettings, Reconstructor

    rec = Reconstructor(ReconstructSettings(device="cpu", detail=True))
    try:
        result = rec.run(load_photo(astronaut_png).rgb, source_path=str(astronaut_png))
    finally:
        rec.close()
    assert result.has_detail
    return result


def _face(result, model):
    obj = build_face_object(result, model, name="Detail")
    if not dr.is_rigged(obj):
        dr.add_detail_rig(obj, result.detail_static, result.detail_compressed,
                          result.detail_stretched)
    for kb in obj.data.shape_keys.key_blocks[1:]:
        kb.value = 0.0
    return obj


def _evaluated(obj) -> np.ndarray:
    bpy.context.view_layer.update()
    return evaluated_vertices(obj)


def _coarse_weights(obj, idx) -> np.ndarray:
    """(len(idx), 2) compression / stretch weights of coarse vertices, read from the evaluated
    mesh with everything after the tension modifier switched off."""
    for m in obj.modifiers:
        m.show_viewport = m.name == dr.MOD_TENSION
    bpy.context.view_layer.update()
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    out = np.empty((2, len(me.vertices)), np.float32)
    me.attributes[dr.COMPRESSION_ATTRIBUTE].data.foreach_get("value", out[0])
    me.attributes[dr.STRETCH_ATTRIBUTE].data.foreach_get("value", out[1])
    ev.to_mesh_clear()
    for m in obj.modifiers:
        m.show_viewport = True
    return out.T[np.asarray(idx)]


def _near(model, result, landmark: int, radius_cm: float = 1.0) -> np.ndarray:
    """Face-part vertices within radius of a MediaPipe landmark on the person's neutral."""
    v = np.asarray(result.neutral_vertices)
    p = model.landmark_skin_points(v, [landmark])[0]
    face = np.arange(9409)
    d = np.linalg.norm(v[face] - p, axis=1)
    return face[d < radius_cm]


def _set_keys(obj, **values):
    for k, v in values.items():
        obj.data.shape_keys.key_blocks[k].value = v


def test_rig_stack_and_properties(detail_result, face_model):
    obj = _face(detail_result, face_model)
    names = [m.name for m in obj.modifiers]
    assert names == [eye_rig.MOD_EYES, *dr.RIG_MODIFIERS]     # the eyes turn before subdivision
    sub = obj.modifiers[dr.MOD_SUBSURF]
    assert (sub.levels, sub.render_levels) == (1, 2)
    for prop in (dr.STATIC_PROP, dr.DYNAMIC_PROP):
        assert obj[prop] == 1.0
        ui = obj.id_properties_ui(prop).as_dict()
        assert (ui["min"], ui["max"]) == (0.0, 2.0)
        assert obj.is_property_overridable_library(f'["{prop}"]')
        # Keyframeable.
        assert obj.keyframe_insert(f'["{prop}"]', frame=1)
    # Rest positions are the Basis.
    rest = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.attributes[dr.REST_ATTRIBUTE].data.foreach_get("vector", rest)
    basis = ict_to_blender(detail_result.neutral_vertices,
                           np.asarray(obj["hiface_origin_cm"]))
    np.testing.assert_allclose(rest.reshape(-1, 3), basis, atol=1e-7)
    # Drivers are simple expressions (no Python at playback).
    for fc in obj.animation_data.drivers:
        assert fc.driver.is_simple_expression, fc.data_path
    # Neutral: no tension anywhere.
    w = _coarse_weights(obj, np.arange(9409))
    assert w.max() == 0.0


def test_smile_compresses_own_eye_corner_and_cheek(detail_result, face_model):
    obj = _face(detail_result, face_model)
    left = np.r_[_near(face_model, detail_result, EYE_OUTER_L, 1.2),
                 _near(face_model, detail_result, CHEEK_L, 1.2)]
    right = np.r_[_near(face_model, detail_result, EYE_OUTER_R, 1.2),
                  _near(face_model, detail_result, CHEEK_R, 1.2)]
    _set_keys(obj, mouthSmile_L=1.0)
    wl, wr = _coarse_weights(obj, left), _coarse_weights(obj, right)
    print(f"\nmouthSmile_L compression: left {wl[:, 0].mean():.3f} (max {wl[:, 0].max():.3f}),"
          f" right {wr[:, 0].mean():.4f}")
    assert wl[:, 0].mean() > 0.15
    assert wr[:, 0].max() < 0.02
    assert wl[:, 0].mean() > 10 * max(wr[:, 0].mean(), 1e-4)


def test_jaw_open_stretches_lower_lip_and_chin_front(detail_result, face_model):
    obj = _face(detail_result, face_model)
    idx = np.r_[_near(face_model, detail_result, LOWER_LIP, 0.8),
                _near(face_model, detail_result, CHIN_FRONT, 0.8)]
    _set_keys(obj, jawOpen=1.0)
    w = _coarse_weights(obj, idx)
    print(f"\njawOpen stretch at the lower lip / chin front: mean {w[:, 1].mean():.3f}")
    assert w[:, 1].mean() > 0.2
    assert w[:, 0].mean() < 0.25 * w[:, 1].mean()


def test_live_tension_is_core_tension(detail_result, face_model):
    """The Geometry Nodes weights are core.tension's mean relative edge change over the
    Blender mesh's edges, through the weight ramp."""
    from hiface_blender.core.tension import vertex_tension

    obj = _face(detail_result, face_model)
    _set_keys(obj, mouthSmile_L=1.0, jawOpen=0.3)
    idx = np.arange(9409)
    w = _coarse_weights(obj, idx)
    keys = obj.data.shape_keys.key_blocks
    n = len(obj.data.vertices)
    rest, now = np.empty(n * 3, np.float32), np.empty(n * 3, np.float32)
    keys[0].data.foreach_get("co", rest)
    now[:] = rest
    for name, value in (("mouthSmile_L", 1.0), ("jawOpen", 0.3)):
        co = np.empty(n * 3, np.float32)
        keys[name].data.foreach_get("co", co)
        now += value * (co - rest)
    edges = np.empty(len(obj.data.edges) * 2, np.int32)
    obj.data.edges.foreach_get("vertices", edges)
    # The stored per-shape tension uses exactly these edges.
    from hiface_blender.core.tension import model_edges
    assert np.array_equal(np.unique(np.sort(edges.reshape(-1, 2), 1), axis=0), model_edges(face_model))
    t = vertex_tension(rest.reshape(-1, 3), now.reshape(1, -1, 3), edges.reshape(-1, 2))[0, idx]
    expect = np.stack([np.clip(-t / dr.FULL_COMPRESSION, 0, 1),
                       np.clip(t / dr.FULL_STRETCH, 0, 1)], 1)
    # float32 edge lengths in Geometry Nodes; the weight ramp multiplies their error by 20.
    assert np.abs(w - expect).max() < 5e-4


def test_dynamic_detail_zero_is_the_static_only_mesh(detail_result, face_model):
    obj = _face(detail_result, face_model)
    _set_keys(obj, mouthSmile_L=1.0, mouthSmile_R=1.0, eyeSquint_L=1.0, eyeSquint_R=1.0,
              jawOpen=0.4)
    full = _evaluated(obj)
    dr.set_detail(obj, dynamic=0.0)
    dyn0 = _evaluated(obj)
    for name in dr.DYNAMIC_MODIFIERS:
        obj.modifiers.remove(obj.modifiers[name])
    static_only = _evaluated(obj)
    print(f"\nwrinkles move the smile's surface by up to {np.abs(full - dyn0).max() * 1e3:.3f} mm")
    assert np.abs(full - dyn0).max() > 5e-5     # the dynamic part does something
    assert np.abs(dyn0 - static_only).max() <= 1e-6


def test_expression_folds_are_deep_enough_to_see(detail_result):
    """Folds of a fraction of a millimetre vanish in a render: the compressed map's valleys
    must reach expression-wrinkle depth (0.2 mm and more) over a visible share of the face."""
    c = detail_result.detail_compressed
    used = c[np.abs(c) > 0]
    assert np.percentile(used, 2) <= -2e-4, np.percentile(used, [1, 2, 5])
    assert (used < -2e-4).mean() > 0.01


def test_all_detail_zero_is_the_subdivided_coarse_mesh(detail_result, face_model):
    obj = _face(detail_result, face_model)
    _set_keys(obj, mouthSmile_L=1.0, browInnerUp_L=0.7, jawOpen=0.5)
    dr.set_detail(obj, static=0.0, dynamic=0.0)
    off = _evaluated(obj)
    for name in (*dr.DISPLACE_MODIFIERS, dr.MOD_TENSION):
        obj.modifiers.remove(obj.modifiers[name])
    coarse = _evaluated(obj)
    assert off.shape == coarse.shape and len(coarse) > 4 * 26719 * 0.9
    assert np.abs(off - coarse).max() <= 1e-6


def test_detail_follows_keyframes_and_sliders(detail_result, face_model):
    obj = _face(detail_result, face_model)
    kb = obj.data.shape_keys.key_blocks["mouthSmile_L"]
    kb.value = 0.0
    kb.keyframe_insert("value", frame=1)
    kb.value = 1.0
    kb.keyframe_insert("value", frame=10)
    obj[dr.DYNAMIC_PROP] = 0.0
    obj.keyframe_insert(f'["{dr.DYNAMIC_PROP}"]', frame=1)
    obj[dr.DYNAMIC_PROP] = 2.0
    obj.keyframe_insert(f'["{dr.DYNAMIC_PROP}"]', frame=10)
    scene = bpy.context.scene
    idx = _near(face_model, detail_result, EYE_OUTER_L, 1.2)
    scene.frame_set(1)
    assert _coarse_weights(obj, idx)[:, 0].max() == 0.0
    dyn = obj.modifiers[dr.MOD_DYNAMIC]
    amount = dr.socket_id(dyn.node_group, "Amount")
    assert dyn[amount] == 0.0
    scene.frame_set(10)
    assert _coarse_weights(obj, idx)[:, 0].mean() > 0.15
    assert dyn[amount] == pytest.approx(2.0)


def test_skin_material_and_modes(detail_result, face_model):
    obj = _face(detail_result, face_model)
    mat = dr.skin_material(obj)
    assert mat is not None
    out = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeOutputMaterial")
    assert out.inputs["Displacement"].is_linked
    attrs = {n.attribute_name for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeAttribute"}
    assert {dr.COMPRESSION_ATTRIBUTE, dr.STRETCH_ATTRIBUTE, dr.STATIC_PROP, dr.DYNAMIC_PROP} <= attrs
    geo = _evaluated(obj)
    dr.set_detail_mode(obj, "BUMP")
    assert mat.displacement_method == "BUMP"
    assert not obj.modifiers[dr.MOD_STATIC].show_viewport
    bump = _evaluated(obj)
    assert np.abs(geo - bump).max() > 1e-5      # the geometry no longer carries the detail
    dr.set_detail_mode(obj, "DISPLACEMENT")
    assert mat.displacement_method == "DISPLACEMENT"
    dr.set_detail_mode(obj, "MODIFIERS")
    np.testing.assert_array_equal(_evaluated(obj), geo)


def test_images_are_packed_and_exact(detail_result, face_model):
    obj = _face(detail_result, face_model)
    img = obj.modifiers[dr.MOD_STATIC].texture.image
    assert img.packed_file is not None and img.is_float
    s = img.size[0]
    px = np.empty(s * s * 4, np.float32)
    img.pixels.foreach_get(px)
    back = px.reshape(s, s, 4)[::-1, :, 0] * obj[dr.SCALE_PROP][0]
    np.testing.assert_allclose(back, detail_result.detail_static, atol=1e-9)


def test_export_detail_maps(detail_result, face_model, tmp_path):
    """The maps written from a face in Blender are the engine's (16-bit PNG within half a step,
    EXR exact to float32); existing files are left alone unless Overwrite is on."""
    from hiface_blender.core.detail import load_displacement

    obj = _face(detail_result, face_model)
    engine = {n: getattr(detail_result, f"detail_{n}") for n in ("static", "compressed", "stretched")}
    paths = dr.export_detail_maps(obj, tmp_path, "png")
    assert sorted(p.name for p in paths) == [f"Detail_detail_{n}.png"
                                             for n in ("compressed", "static", "stretched")]
    for name, truth in engine.items():
        d, meta = load_displacement(tmp_path / f"Detail_detail_{name}.png")
        assert np.abs(truth).max() > 1e-5 and meta["units"] == "m"
        assert np.abs(d - truth).max() <= meta["scale_m"] * (1 / 65535 + 1e-6)
    dr.export_detail_maps(obj, tmp_path / "exr", "exr")
    for name, truth in engine.items():
        d, _ = load_displacement(tmp_path / "exr" / f"Detail_detail_{name}.exr")
        np.testing.assert_allclose(d, truth, rtol=0, atol=1e-9)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    obj[dr.SCALE_PROP] = [2 * x for x in obj[dr.SCALE_PROP]]    # would change every file
    with pytest.raises(ValueError, match="already exists"):
        dr.export_detail_maps(obj, tmp_path, "png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    dr.export_detail_maps(obj, tmp_path, "png", overwrite=True)
    d, meta = load_displacement(tmp_path / "Detail_detail_static.png")
    assert np.abs(d - 2 * engine["static"]).max() <= meta["scale_m"] * (1 / 65535 + 1e-6)
    dr.remove_detail_rig(obj)
    with pytest.raises(ValueError, match="no detail maps"):
        dr.export_detail_maps(obj, tmp_path / "none", "png")
    assert not (tmp_path / "none").exists()


def test_remove_rig(detail_result, face_model):
    obj = _face(detail_result, face_model)
    dr.remove_detail_rig(obj)
    assert [m.name for m in obj.modifiers] == [eye_rig.MOD_EYES]
    assert all(eye_rig.MOD_EYES in fc.data_path for fc in obj.animation_data.drivers)
    mat = dr.skin_material(obj)
    assert not any(n.get("hiface_detail") for n in mat.node_tree.nodes)


def test_playback_benchmark_runs_and_cleans_up(detail_result, face_model):
    """The playback cost itself is measured by `python -m hiface_blender bench` (not a timed
    test); here: the benchmark evaluates both rig variants and leaves the file as it was."""
    before = (set(bpy.data.objects.keys()), set(bpy.data.meshes.keys()), set(bpy.data.images.keys()))
    figures = dr.bench_playback(detail_result, face_model, frames=3, repeats=1)
    assert figures["frames"] == 3 and figures["full_s"] > 0 and figures["static_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["full_s"] / figures["static_s"], rel=1e-3)
    after = (set(bpy.data.objects.keys()), set(bpy.data.meshes.keys()), set(bpy.data.images.keys()))
    assert after == before
