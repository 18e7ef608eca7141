"""The operators through the real job runner and the real engine: success, undo, bad input,
cancel. Headless Blender fires no timers, so the tests pump the runner's queue themselves."""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

import bpy

from hiface_testdata import run_jobs

ENGINE = importlib.util.find_spec("hiface_blender.core.reconstruct") is not None
needs_engine = pytest.mark.skipif(not ENGINE, reason="hiface_blender.core.reconstruct not written yet")


@pytest.fixture(scope="module")
def engine_ready():
    """Skip (with the reason) where the model files have not been built."""
    if not ENGINE:
        pytest.skip("hiface_blender.core.reconstruct not written yet")
    from hiface_blender import paths
    from hiface_blender.core.errors import HiFaceError
    try:
        paths.data_dir()
    except HiFaceError as exc:
        pytest.skip(str(exc))


def test_reconstruct_photo_end_to_end(addon, engine_ready, astronaut_png, data_names,
                                      face_model):
    jobs = addon
    bpy.ops.ed.undo_push(message="Before")  # Blender's UI always has a step for the file
    before = data_names()
    t0 = time.perf_counter()
    assert bpy.ops.hiface.reconstruct_photo(filepath=str(astronaut_png)) == {"FINISHED"}
    assert time.perf_counter() - t0 < 1.0, "the operator must return at once"
    assert jobs.is_running()
    # While running, a second job is refused by poll.
    with pytest.raises(RuntimeError):
        bpy.ops.hiface.reconstruct_photo(filepath=str(astronaut_png))

    state, message = run_jobs(jobs)
    assert state == "done", message
    wm = bpy.context.window_manager
    assert wm.hiface_progress == pytest.approx(1.0)

    obj = bpy.context.view_layer.objects.active
    assert obj is not None and obj.name == "HiFace astronaut" and obj.select_get()
    assert obj["hiface"] == 1 and obj["hiface_source"] == str(astronaut_png)
    keys = obj.data.shape_keys.key_blocks
    assert len(keys) == 54
    # The photo smiles: the fitted smile shows on the sliders.
    assert keys["mouthSmile_L"].value > 0.1 and keys["mouthSmile_R"].value > 0.1
    assert len(obj.data.vertices) == 26719
    cam = bpy.context.scene.camera
    assert cam is not None and cam.name == "HiFace astronaut Camera"
    assert (bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y) == (512, 512)
    assert cam.data.background_images[0].image.size[:] == (512, 512)

    # Laid over the photo: the model's 68 landmark vertices, seen through the new camera, sit
    # on the astronaut's face (MediaPipe finds it at x 181..270, y 72..177, centre 224, 123).
    from bpy_extras.object_utils import world_to_camera_view
    dg = bpy.context.evaluated_depsgraph_get()
    me = obj.evaluated_get(dg).to_mesh()
    px = []
    for i in face_model.landmarks68:
        ndc = world_to_camera_view(bpy.context.scene, cam, obj.matrix_world @ me.vertices[int(i)].co)
        px.append((ndc.x * 512 - 0.5, (1 - ndc.y) * 512 - 0.5))
    obj.evaluated_get(dg).to_mesh_clear()
    px = np.array(px)
    assert np.abs(px.mean(0) - (224, 123)).max() < 12, px.mean(0)
    assert (px.min(0) > (181 - 15, 72 - 15)).all() and (px.max(0) < (270 + 15, 177 + 15)).all()

    # One undo step removes the face, its camera, materials and images.
    bpy.ops.ed.undo()
    assert data_names() == before


@needs_engine
def test_reconstruct_from_loaded_image(addon, engine_ready, astronaut_png, data_names, tmp_path):
    jobs = addon
    img = bpy.data.images.load(str(astronaut_png))
    prefs = bpy.context.preferences.addons["hiface_blender"].preferences
    assert prefs.detail_size == "1024" and prefs.fill_neck_clothing
    prefs.detail_size = "512"      # the preferences reach the engine
    prefs.fill_neck_clothing = False
    try:
        assert bpy.ops.hiface.reconstruct_image(image_name=img.name) == {"FINISHED"}
        state, message = run_jobs(jobs)
        engine = jobs._cache["reconstructor"].settings
    finally:
        prefs.detail_size = "1024"
        prefs.fill_neck_clothing = True
    assert state == "done", message
    assert engine.detail_size == 512 and engine.fill_neck_clothing is False
    obj = bpy.context.view_layer.objects.active
    assert obj.name == "HiFace astronaut" and obj["hiface_source"] == str(astronaut_png)
    assert bpy.data.images[f"{obj.name} Detail Static"].size[:] == (512, 512)
    # The Detail panel's export writes the maps at that size; a second export does not
    # overwrite them unless asked.
    from hiface_blender.core.detail import load_displacement
    out = tmp_path / "maps"
    assert bpy.ops.hiface.export_detail_maps(directory=str(out), file_format="exr") == {"FINISHED"}
    d, meta = load_displacement(out / "HiFace_astronaut_detail_compressed.exr")
    assert d.shape == (512, 512) and meta["units"] == "m" and np.abs(d).max() > 1e-5
    assert len(list(out.iterdir())) == 6
    with pytest.raises(RuntimeError, match="already exists"):
        bpy.ops.hiface.export_detail_maps(directory=str(out), file_format="exr")
    # The loaded image itself is the camera's backdrop: no copy of the photo was made.
    assert bpy.context.scene.camera.data.background_images[0].image == img
    assert not any(i.name.endswith(" Photo") for i in bpy.data.images)


def test_missing_file_changes_nothing(addon, data_names, tmp_path):
    before = data_names()
    with pytest.raises(RuntimeError, match="Photo not found"):
        bpy.ops.hiface.reconstruct_photo(filepath=str(tmp_path / "nobody.jpg"))
    assert not addon.is_running()
    assert data_names() == before


def test_missing_image_changes_nothing(addon, data_names):
    before = data_names()
    with pytest.raises(RuntimeError, match="No image named"):
        bpy.ops.hiface.reconstruct_image(image_name="not loaded")
    assert data_names() == before


@needs_engine
def test_not_an_image_changes_nothing(addon, data_names, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("these are not pixels\n")
    before = data_names()
    assert bpy.ops.hiface.reconstruct_photo(filepath=str(bad)) == {"FINISHED"}
    state, message = run_jobs(addon)
    assert state == "error"
    assert "\n" not in message and "holiday.jpg" in message
    assert bpy.context.window_manager.hiface_status.startswith("Error: ")
    assert data_names() == before


@needs_engine
def test_photo_without_face_changes_nothing(addon, engine_ready, data_names, tmp_path):
    from PIL import Image
    path = tmp_path / "wall.png"
    yy, xx = np.mgrid[0:256, 0:256]
    Image.fromarray(np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)).save(path)
    before = data_names()
    bpy.ops.hiface.reconstruct_photo(filepath=str(path))
    state, message = run_jobs(addon)
    assert state == "error" and "face" in message.lower(), message
    assert data_names() == before


def test_cancel_mid_fit_changes_nothing(addon, engine_ready, astronaut_png, data_names):
    jobs = addon
    before = data_names()
    scene_camera = bpy.context.scene.camera
    bpy.ops.hiface.reconstruct_photo(filepath=str(astronaut_png))
    wm = bpy.context.window_manager

    def cancel_once_fitting():
        if wm.hiface_progress > 0.05:      # models loaded, fitting under way
            bpy.ops.hiface.cancel()
            return True
        return False

    state, message = run_jobs(jobs, on_progress=cancel_once_fitting)
    assert state == "cancelled", message
    assert data_names() == before and bpy.context.scene.camera == scene_camera
    assert wm.hiface_status == "Cancelled"


def test_cancel_before_start_changes_nothing(addon, astronaut_png, data_names):
    before = data_names()
    bpy.ops.hiface.reconstruct_photo(filepath=str(astronaut_png))
    bpy.ops.hiface.cancel()
    assert run_jobs(addon)[0] == "cancelled"
    assert data_names() == before


def test_loading_a_file_stops_the_job(addon, astronaut_png, tmp_path):
    blend = tmp_path / "other.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    bpy.ops.hiface.reconstruct_photo(filepath=str(astronaut_png))
    assert addon.is_running()
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert not addon.is_running()
    assert not bpy.app.timers.is_registered(addon._tick)
    assert not addon.pump()


def test_expression_operators_and_grouping(addon, face_model, face_result):
    from hiface_blender.blender.build import build_face_object
    from hiface_blender.ui.panels import REGIONS, pretty, region_of

    names = [str(n) for n in face_model.exp_names]
    regions = {region_of(n) for n in names}
    assert regions == {label for _, label in REGIONS}
    assert pretty("mouthSmile_L", "mouth") == "Smile L"
    assert pretty("eyeLookDown_R", "eye") == "Look Down R"
    assert pretty("jawOpen", "jaw") == "Open"

    obj = build_face_object(face_result, face_model)
    bpy.context.view_layer.objects.active = obj
    keys = obj.data.shape_keys.key_blocks
    assert bpy.ops.hiface.set_expression(target="NEUTRAL") == {"FINISHED"}
    assert all(kb.value == 0.0 for kb in keys[1:])
    bpy.ops.hiface.set_expression(target="PHOTO")
    np.testing.assert_allclose([kb.value for kb in keys[1:]], face_result.expression, atol=1e-6)

    assert bpy.ops.hiface.add_photo_camera() == {"FINISHED"}
    assert bpy.context.scene.camera is not None
    assert bpy.context.scene.render.resolution_x == 640
