"""Import ARKit CSV: a Live Link Face take keyed onto ARKit shape keys, timecodes to frames,
unknown columns, bad files and targets leave nothing keyed."""
from __future__ import annotations

import numpy as np
import pytest

import bpy

from hiface_testdata import LLF_FIRST_LINE

# A Live Link Face export, as the app writes it: 52 blendshapes then head and eye rotation,
# timecodes HH:MM:SS:FF.mmm at 60 frames per second.
HEADER = LLF_FIRST_LINE.split(",")
FPS_TC = 60
START = (14, 3, 52, 28.207)          # a take starts mid-second: 14:03:52:28.207
N_ROWS = 121                          # two seconds at 60 fps


def _jaw(i):
    return 0.5 + 0.4 * np.sin(i / 9.0)


def _blink(i):
    return 1.0 if 50 <= i < 56 else 0.02


def _brow(i):
    return i / (N_ROWS - 1)


def write_take(path, extra_columns=(), rows=N_ROWS):
    h, m, s, ff = START
    start = h * 3600 + m * 60 + s + ff / FPS_TC
    lines = [",".join(HEADER + list(extra_columns))]
    for i in range(rows):
        t = start + i / FPS_TC
        whole = int(t)
        frame = (t - whole) * FPS_TC
        hh, rem = divmod(whole, 3600)
        mm, ss = divmod(rem, 60)
        values = {"JawOpen": _jaw(i), "EyeBlinkLeft": _blink(i), "EyeBlinkRight": _blink(i),
                  "BrowInnerUp": _brow(i), "HeadYaw": 0.1}
        row = [f"{hh:02d}:{mm:02d}:{ss:02d}:{frame:06.3f}", "61"]
        row += [f"{values.get(c, 0.0):.6f}" for c in HEADER[2:]]
        row += ["0.5"] * len(extra_columns)
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def names():
    kinds = ("actions", "objects", "meshes", "shape_keys", "materials", "images")
    return {k: set(getattr(bpy.data, k).keys()) for k in kinds}


def rig(keys, name="Rig"):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 0, 1)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    for k in keys:
        obj.shape_key_add(name=k)
    return obj


def keys_of(obj, key_name):
    action = obj.data.shape_keys.animation_data.action
    bag = action.layers[0].strips[0].channelbags[0] if hasattr(action, "slots") else action
    fc = bag.fcurves.find(f'key_blocks["{key_name}"].value')
    assert fc is not None, key_name
    co = np.empty(2 * len(fc.keyframe_points), np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2], co[1::2]


@pytest.mark.parametrize("scene_fps", [30, 24])
def test_take_keys_at_scene_frames(addon, tmp_path, scene_fps):
    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = scene_fps, 1.0
    obj = rig(["jawOpen", "eyeBlinkLeft", "eyeBlink_R", "browInnerUp_L", "browInnerUp_R",
               "tongueOut", "Custom"])
    path = write_take(tmp_path / "take.csv")
    before = names()
    assert bpy.ops.hiface.import_arkit_csv(filepath=str(path), target=obj.name,
                                           start_frame=101) == {"FINISHED"}
    assert {k: v - before[k] for k, v in names().items() if v - before[k]} == \
        {"actions": {"Rig take"}}
    frames, jaw = keys_of(obj, "jawOpen")
    # Two seconds of take: 2 * fps + 1 keys from the start frame, timecode differences in time.
    np.testing.assert_array_equal(frames, 101 + np.arange(2 * scene_fps + 1))
    rows = (frames - 101) / scene_fps * FPS_TC
    np.testing.assert_allclose(jaw, np.interp(rows, np.arange(N_ROWS), _jaw(np.arange(N_ROWS))),
                               atol=1e-4)
    # A single ARKit channel drives both ICT halves; the blink peaks on both eyes.
    _, bl = keys_of(obj, "browInnerUp_L")
    _, br = keys_of(obj, "browInnerUp_R")
    np.testing.assert_allclose(bl, br)
    np.testing.assert_allclose(bl, rows / (N_ROWS - 1), atol=1e-4)
    for k in ("eyeBlinkLeft", "eyeBlink_R"):
        f, v = keys_of(obj, k)
        assert v.max() > 0.9 and abs((f[v.argmax()] - 101) / scene_fps - 50 / 60) < 0.1
    paths = {fc.data_path for fc in obj.data.shape_keys.animation_data.action.layers[0]
             .strips[0].channelbags[0].fcurves}
    assert 'key_blocks["Custom"].value' not in paths
    # tongueOut is in the take (all zeros): keyed too.
    assert 'key_blocks["tongueOut"].value' in paths
    assert obj.animation_data is None                  # head columns are not applied


def test_take_on_a_hiface_face(addon, tmp_path, face_model, face_result):
    from hiface_blender.blender.build import build_face_object
    face = build_face_object(face_result, face_model, name="Face")
    bpy.context.view_layer.objects.active = face
    path = write_take(tmp_path / "take.csv")
    assert bpy.ops.hiface.import_arkit_csv(filepath=str(path)) == {"FINISHED"}
    action = face.data.shape_keys.animation_data.action
    assert len(action.layers[0].strips[0].channelbags[0].fcurves) == 53
    assert action["hiface_source"] == str(path)


def test_unknown_columns_warn_and_still_key(addon, tmp_path, capfd):
    obj = rig(["jawOpen"])
    path = write_take(tmp_path / "take.csv", extra_columns=("Mood", "Lighting"))
    assert bpy.ops.hiface.import_arkit_csv(filepath=str(path), target=obj.name) == {"FINISHED"}
    assert obj.data.shape_keys.animation_data.action is not None
    # Headless Blender prints operator reports.
    assert "Ignored 2 unknown column(s): Mood, Lighting" in capfd.readouterr().out


def test_only_unknown_columns_keys_nothing(addon, tmp_path):
    obj = rig(["jawOpen"])
    path = tmp_path / "other.csv"
    path.write_text("Timecode,Mood,Lighting\n00:00:00:00.000,1,2\n00:00:00:01.000,1,2\n")
    before = names()
    with pytest.raises(RuntimeError, match=r"no ARKit blendshape columns \(unknown columns: "
                                           r"Mood, Lighting\)"):
        bpy.ops.hiface.import_arkit_csv(filepath=str(path), target=obj.name)
    assert names() == before and obj.data.shape_keys.animation_data is None


def test_target_without_arkit_keys_keys_nothing(addon, tmp_path):
    obj = rig(["Smile", "Frown"], name="Prop")
    before = names()
    with pytest.raises(RuntimeError, match="'Prop' has no ARKit shape keys"):
        bpy.ops.hiface.import_arkit_csv(filepath=str(write_take(tmp_path / "t.csv")),
                                        target=obj.name)
    assert names() == before and obj.data.shape_keys.animation_data is None


def test_bad_timecode_keys_nothing(addon, tmp_path):
    obj = rig(["jawOpen"])
    path = write_take(tmp_path / "t.csv", rows=5)
    lines = path.read_text().splitlines()
    lines[3] = "later" + lines[3][lines[3].index(","):]
    path.write_text("\n".join(lines) + "\n")
    before = names()
    with pytest.raises(RuntimeError, match="line 4: bad timecode 'later'"):
        bpy.ops.hiface.import_arkit_csv(filepath=str(path), target=obj.name)
    assert names() == before and obj.data.shape_keys.animation_data is None


def test_import_is_one_undo_step(addon, tmp_path):
    obj = rig(["jawOpen"])
    bpy.ops.ed.undo_push(message="Before")
    before = names()
    # As from a button: scripts call operators without an undo push unless asked.
    bpy.ops.hiface.import_arkit_csv("EXEC_DEFAULT", True,
                                    filepath=str(write_take(tmp_path / "t.csv")), target=obj.name)
    assert "Rig t" in bpy.data.actions
    bpy.ops.ed.undo()
    assert names() == before
    assert bpy.data.objects["Rig"].data.shape_keys.animation_data is None
