"""Keyframes from a Track: values at the right frames, frame-rate mapping, head rotation,
ARKit spellings, bad targets, rollback, undo; the operator end to end on a real GRID clip."""
from __future__ import annotations

import importlib.util
import math
import time

import numpy as np
import pytest

import bpy

from hiface_testdata import GRID_DIR, run_jobs

TRACKER = importlib.util.find_spec("hiface_blender.core.tracking") is not None
GRID_CLIP = GRID_DIR / "bbaf2n.mpg"

# Every kind of datablock a retarget could touch by mistake.
KINDS = ("actions", "objects", "meshes", "materials", "images", "cameras", "shape_keys",
         "collections", "worlds", "node_groups", "scenes", "lights", "textures", "texts")


def no_action(obj) -> bool:
    """No action on the object (a HiFace face always has its eye rig's drivers)."""
    return obj.animation_data is None or obj.animation_data.action is None


def all_names() -> dict[str, set[str]]:
    return {k: set(getattr(bpy.data, k).keys()) for k in KINDS}


def new_since(before) -> dict[str, set[str]]:
    now = all_names()
    return {k: now[k] - before[k] for k in KINDS if now[k] - before[k]}


def make_track(names, n=50, fps=25.0, yaw_deg=None, stride=1, seed=0):
    """Smooth, distinct curves per channel; optional yaw about the camera's vertical axis."""
    from hiface_blender.core.result import Track

    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    phase = rng.uniform(0, 2 * np.pi, len(names))[None, :]
    expr = (0.5 + 0.45 * np.sin(t / 6.0 + phase)).astype(np.float32)
    yaw = np.zeros(n) if yaw_deg is None else np.radians(yaw_deg)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.zeros((n, 3, 3), np.float32)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = c, s, 1, -s, c
    return Track(expression=expr, exp_names=np.array(names), rotation=rot,
                 translation=np.tile([0, 0, 600.0], (n, 1)).astype(np.float32),
                 confidence=np.ones(n, np.float32), face_found=np.ones(n, bool),
                 frame_indices=(np.arange(n) * stride).astype(np.int32), fps=fps,
                 intrinsics=np.eye(3, dtype=np.float32), image_size=np.array([288, 360]))


def plain_mesh(key_names, name="Rig"):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 0, 1)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    if key_names:
        obj.shape_key_add(name="Basis")
        for k in key_names:
            obj.shape_key_add(name=k)
    return obj


def curve_keys(action, data_path, index=0):
    """(frames, values) of one curve of an action (layered or legacy)."""
    fc = _fcurves(action).find(data_path, index=index)
    assert fc is not None, f"no curve {data_path}[{index}]"
    co = np.empty(2 * len(fc.keyframe_points), np.float32)
    fc.keyframe_points.foreach_get("co", co)
    return co[0::2], co[1::2]


def _fcurves(action):
    if hasattr(action, "slots") and action.layers:
        return action.layers[0].strips[0].channelbags[0].fcurves
    return action.fcurves


def kb_path(name):
    return f'key_blocks["{name}"].value'


@pytest.fixture
def ict_names(face_model):
    return [str(n) for n in face_model.exp_names]


@pytest.fixture
def face(face_model, face_result):
    from hiface_blender.blender.build import build_face_object
    return build_face_object(face_result, face_model, name="Face")


def test_keys_match_the_track_at_scene_rate(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    track = make_track(ict_names, n=40, fps=25.0)
    before = all_names()
    action = apply_track(face, track, start_frame=10, scene_fps=25.0)
    assert new_since(before) == {"actions": {"Face Retarget", "Face Retarget Head"}}
    key = face.data.shape_keys
    assert key.animation_data.action == action
    assert len(_fcurves(action)) == 53
    for k in ("jawOpen", "mouthSmile_L", "browInnerUp_R", "eyeBlink_L"):
        frames, values = curve_keys(action, kb_path(k))
        np.testing.assert_array_equal(frames, np.arange(10, 50))
        np.testing.assert_allclose(values, track.expression[:, ict_names.index(k)], atol=1e-6)
    # The curves play: the key's value follows the action when the frame changes.
    bpy.context.scene.frame_set(10 + 17)
    assert key.key_blocks["jawOpen"].value == pytest.approx(
        track.expression[17, ict_names.index("jawOpen")], abs=1e-5)
    fc = _fcurves(action)[0]
    assert {p.interpolation for p in fc.keyframe_points} == {"LINEAR"}


@pytest.mark.parametrize("scene_fps", [24.0, 30.0])
def test_frame_rate_mapping_resamples_in_time(face, ict_names, scene_fps):
    from hiface_blender.blender.animate import apply_track

    bpy.context.scene.render.fps, bpy.context.scene.render.fps_base = int(scene_fps), 1.0
    track = make_track(ict_names, n=50, fps=25.0)
    action = apply_track(face, track, start_frame=1)        # the scene's rate
    src_t = np.arange(50) / 25.0
    n_keys = int(np.floor(49 / 25.0 * scene_fps + 1e-6)) + 1
    for k in ("jawOpen", "mouthPucker"):
        frames, values = curve_keys(action, kb_path(k))
        np.testing.assert_array_equal(frames, 1 + np.arange(n_keys))
        want = np.interp((frames - 1) / scene_fps, src_t, track.expression[:, ict_names.index(k)])
        np.testing.assert_allclose(values, want, atol=1e-5)
    # Same duration in seconds either way.
    assert (n_keys - 1) / scene_fps == pytest.approx(49 / 25.0, abs=1.0 / scene_fps)


def test_stride_and_source_frame_numbers(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    track = make_track(ict_names, n=20, fps=30.0, stride=2)    # every other source frame
    action = apply_track(face, track, start_frame=1, scene_fps=30.0)
    frames, values = curve_keys(action, kb_path("jawOpen"))
    assert len(frames) == 39                                     # 38 frames of source time
    np.testing.assert_allclose(values[::2], track.expression[:, ict_names.index("jawOpen")],
                               atol=1e-6)


def test_variable_frame_rate_keys_follow_the_frames_own_times(face, ict_names):
    """A phone clip's frames at their own times (30 fps, a stretch at 12, 30 again) are keyed
    where they were shown, not at frame number / fps (which would end 0.25 s early here)."""
    from hiface_blender.blender.animate import apply_track

    track = make_track(ict_names, n=24, fps=30.0)
    steps = np.r_[np.full(8, 1 / 30.0), np.full(8, 1 / 12.0), np.full(7, 1 / 30.0)]
    track.frame_times = 2.0 + np.r_[0.0, np.cumsum(steps)]      # the clip's own clock
    action = apply_track(face, track, start_frame=1, scene_fps=30.0)
    frames, values = curve_keys(action, kb_path("jawOpen"))
    t = track.frame_times - track.frame_times[0]
    assert frames[-1] == 1 + np.floor(t[-1] * 30.0 + 1e-6) and frames[-1] > 1 + 23
    want = np.interp((frames - 1) / 30.0, t, track.expression[:, ict_names.index("jawOpen")])
    np.testing.assert_allclose(values, want, atol=1e-5)


def test_head_rotation_relative_to_first_pose(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    yaw = 10.0 + 20.0 * np.sin(np.arange(30) / 5.0)
    track = make_track(ict_names, n=30, fps=30.0, yaw_deg=yaw)
    face.rotation_euler = (0.0, 0.0, 0.0)
    apply_track(face, track, scene_fps=30.0)
    head = face.animation_data.action
    assert head.name == "Face Retarget Head"
    # Turning about the camera's downward axis is turning about Blender's -Z, from the first
    # frame's pose: the nose swings the same way as in the video seen from the front.
    _, z = curve_keys(head, "rotation_euler", 2)
    _, x = curve_keys(head, "rotation_euler", 0)
    np.testing.assert_allclose(z, -np.radians(yaw - yaw[0]), atol=1e-4)
    np.testing.assert_allclose(x, 0.0, atol=1e-5)
    bpy.context.scene.frame_set(1)
    assert face.rotation_euler.z == pytest.approx(0.0, abs=1e-6)
    # The nose (the face's -Y) turns towards the video's -x when yaw grows.
    bpy.context.scene.frame_set(int(np.argmax(yaw)) + 1)
    nose = face.matrix_world.to_3x3() @ __import__("mathutils").Vector((0, -1, 0))
    assert nose.x < -0.1


def test_head_rotation_keeps_the_objects_orientation(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    face.rotation_mode = "QUATERNION"
    face.rotation_quaternion = (math.cos(0.4), 0.0, 0.0, math.sin(0.4))   # 0.8 rad about Z
    track = make_track(ict_names, n=10, fps=30.0, yaw_deg=np.linspace(0, 30, 10))
    apply_track(face, track, scene_fps=30.0)
    _, w = curve_keys(face.animation_data.action, "rotation_quaternion", 0)
    _, z = curve_keys(face.animation_data.action, "rotation_quaternion", 3)
    angle = 2 * np.arctan2(z, w)
    np.testing.assert_allclose(angle, 0.8 - np.radians(np.linspace(0, 30, 10)), atol=1e-4)


def test_no_head_motion_touches_only_the_shape_keys(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    before = all_names()
    apply_track(face, make_track(ict_names), head_motion=False, action_name="Take 1")
    assert new_since(before) == {"actions": {"Take 1"}}
    assert no_action(face)


@pytest.mark.parametrize("keys", [
    ["mouthSmileLeft", "MouthSmileRight", "jawOpen", "browInnerUp", "cheekPuff",
     "eyeBlink_L", "blendShape1.eyeBlinkRight", "tongueOut", "Custom"],
])
def test_arkit_spellings_on_a_plain_mesh(ict_names, keys):
    from hiface_blender.blender.animate import apply_track

    obj = plain_mesh(keys)
    track = make_track(ict_names, n=12, fps=24.0)
    before = all_names()
    action = apply_track(obj, track, scene_fps=24.0)
    assert new_since(before) == {"actions": {"Rig Retarget", "Rig Retarget Head"}}
    paths = {fc.data_path for fc in _fcurves(action)}
    want = {kb_path(k) for k in keys if k not in ("tongueOut", "Custom")}
    assert paths == want
    e = {n: track.expression[:, i] for i, n in enumerate(ict_names)}
    checks = {"mouthSmileLeft": e["mouthSmile_L"], "MouthSmileRight": e["mouthSmile_R"],
              "eyeBlink_L": e["eyeBlink_L"], "blendShape1.eyeBlinkRight": e["eyeBlink_R"],
              "browInnerUp": (e["browInnerUp_L"] + e["browInnerUp_R"]) / 2,
              "cheekPuff": (e["cheekPuff_L"] + e["cheekPuff_R"]) / 2}
    for k, v in checks.items():
        np.testing.assert_allclose(curve_keys(action, kb_path(k))[1], v, atol=1e-6)


@pytest.mark.parametrize("keys", [None, ["Smile", "Frown", "Key 3"]])
def test_target_without_arkit_keys_changes_nothing(ict_names, keys):
    from hiface_blender.blender.animate import apply_track
    from hiface_blender.core.errors import HiFaceError

    obj = plain_mesh(keys, name="Prop")
    before = all_names()
    with pytest.raises(HiFaceError, match="'Prop' has no (ARKit )?shape keys"):
        apply_track(obj, make_track(ict_names))
    assert new_since(before) == {}
    assert obj.animation_data is None
    assert obj.data.shape_keys is None or obj.data.shape_keys.animation_data is None


def test_failure_while_writing_rolls_back(face, ict_names, monkeypatch):
    from hiface_blender.blender import animate

    calls = {"n": 0}
    real = animate._key_curve

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 54:                  # the first head curve
            raise RuntimeError("disk full")
        return real(*a, **kw)

    monkeypatch.setattr(animate, "_key_curve", failing)
    before = all_names()
    with pytest.raises(RuntimeError, match="disk full"):
        animate.apply_track(face, make_track(ict_names))
    assert new_since(before) == {}
    assert no_action(face) and face.data.shape_keys.animation_data is None


def test_replaced_action_is_kept(face, ict_names):
    from hiface_blender.blender.animate import apply_track

    first = apply_track(face, make_track(ict_names), head_motion=False, action_name="Take 1")
    notes = []
    second = apply_track(face, make_track(ict_names, seed=1), head_motion=False,
                         action_name="Take 2", notes=notes)
    assert face.data.shape_keys.animation_data.action == second
    assert first.use_fake_user and "Take 1" in bpy.data.actions
    assert any("'Take 1' was replaced" in n for n in notes)


def test_bad_track_changes_nothing(face, ict_names):
    from hiface_blender.blender.animate import apply_track
    from hiface_blender.core.errors import HiFaceError

    track = make_track(ict_names)
    track.expression = track.expression[:0]
    track.rotation = track.rotation[:0]
    before = all_names()
    with pytest.raises(HiFaceError, match="no usable frames"):
        apply_track(face, track)
    assert new_since(before) == {}


def test_keyframe_timing_1000_frames(capsys):
    from hiface_blender.blender.animate import bench_keyframes

    shapes = bench_keyframes(1000, repeats=5, head_motion=False)
    full = bench_keyframes(1000, repeats=5, head_motion=True)
    with capsys.disabled():
        print(f"\nkeyframes 1000 frames x 53 shape keys: median {shapes['median_s'] * 1000:.1f} ms;"
              f" with head rotation: median {full['median_s'] * 1000:.1f} ms")
    assert not bpy.data.actions and "HiFace Bench" not in bpy.data.objects


# ---------------------------------------------------------------------------------------------
# The operator through the job runner

def test_apply_step_is_one_undo_step(addon, face, ict_names):
    """The main-thread step of a finished job: keys, then one undo step removes them all."""
    from hiface_blender.ui import retarget

    bpy.context.view_layer.objects.active = face
    bpy.ops.ed.undo_push(message="Before")
    before = all_names()
    apply = retarget._make_apply(bpy.context, target=face.name, start_frame=1, match_fps=True,
                                 head_motion=True, video="/clips/take.mp4")
    note = apply(retarget.RetargetPayload(track=make_track(ict_names),
                                          notes=["3 of 50 frames had no face"]))
    assert "3 of 50 frames had no face" in note
    assert new_since(before) == {"actions": {"Face Retarget", "Face Retarget Head"}}
    assert bpy.data.actions["Face Retarget"]["hiface_source"] == "/clips/take.mp4"
    bpy.ops.ed.undo()
    assert all_names() == before
    face = bpy.data.objects["Face"]
    assert no_action(face) and face.data.shape_keys.animation_data is None


def test_operator_refuses_bad_targets_and_files(addon, tmp_path, face):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not a video")
    prop = plain_mesh(["Smile"], name="Prop")
    before = all_names()
    with pytest.raises(RuntimeError, match="'Prop' has no ARKit shape keys"):
        bpy.ops.hiface.retarget_video(filepath=str(video), target=prop.name)
    with pytest.raises(RuntimeError, match="Video not found"):
        bpy.ops.hiface.retarget_video(filepath=str(tmp_path / "none.mp4"), target=face.name)
    with pytest.raises(RuntimeError, match="No object named"):
        bpy.ops.hiface.retarget_video(filepath=str(video), target="Nobody")
    assert not addon.is_running("retarget")
    assert all_names() == before


needs_tracker = pytest.mark.skipif(not TRACKER, reason="hiface_blender.core.tracking not written yet")


@needs_tracker
def test_unreadable_video_changes_nothing(addon, tmp_path, face):
    video = tmp_path / "clip.mp4"
    video.write_text("these are not frames\n")
    before = all_names()
    assert bpy.ops.hiface.retarget_video(filepath=str(video), target=face.name) == {"FINISHED"}
    state, message = run_jobs(addon, "retarget")
    assert state == "error" and "clip.mp4" in message and "\n" not in message, message
    assert bpy.context.window_manager.hiface_retarget_status.startswith("Error: ")
    assert all_names() == before and face.data.shape_keys.animation_data is None


@needs_tracker
def test_video_without_a_face_changes_nothing(addon, tmp_path, face):
    import cv2
    path = tmp_path / "wall.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
    yy, xx = np.mgrid[0:120, 0:160]
    for i in range(8):
        out.write(np.stack([(xx + 4 * i) % 256, yy, (xx + yy) // 2], -1).astype(np.uint8))
    out.release()
    before = all_names()
    bpy.ops.hiface.retarget_video(filepath=str(path), target=face.name)
    state, message = run_jobs(addon, "retarget")
    assert state == "error" and "no face" in message.lower(), message
    assert all_names() == before


@needs_tracker
def test_cancel_changes_nothing(addon, face):
    before = all_names()
    bpy.ops.hiface.retarget_video(filepath=str(GRID_CLIP), target=face.name)
    assert addon.is_running("retarget") and not addon.is_running()   # reconstruct stays free
    wm = bpy.context.window_manager

    def cancel_once_tracking():
        if "frame" in wm.hiface_retarget_status:                     # per-frame progress
            bpy.ops.hiface.cancel_retarget()
            return True
        return False

    state, _ = run_jobs(addon, "retarget", on_progress=cancel_once_tracking)
    assert state == "cancelled"
    assert all_names() == before and face.data.shape_keys.animation_data is None
    assert wm.hiface_retarget_status == "Cancelled"


@needs_tracker
def test_retarget_grid_clip_end_to_end(addon, face, ict_names):
    if not GRID_CLIP.is_file():
        pytest.fail(f"GRID sample missing: {GRID_CLIP}")
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    bpy.ops.ed.undo_push(message="Before")
    before = all_names()
    seen = []
    t0 = time.perf_counter()
    assert bpy.ops.hiface.retarget_video(filepath=str(GRID_CLIP), target=face.name,
                                         start_frame=5, clip_end=19, smoothing=0.3) == {"FINISHED"}
    assert time.perf_counter() - t0 < 1.0, "the operator must return at once"
    wm = bpy.context.window_manager
    state, message = run_jobs(addon, "retarget",
                              on_progress=lambda: seen.append(wm.hiface_retarget_status))
    assert state == "done", message
    assert any("frame" in s for s in seen)
    assert new_since(before) == {"actions": {"Face Retarget", "Face Retarget Head"}}
    action = face.data.shape_keys.animation_data.action
    assert len(_fcurves(action)) == 53
    frames, jaw = curve_keys(action, kb_path("jawOpen"))
    # 20 frames at 25 fps onto 24 fps: 19 keys from frame 5.
    np.testing.assert_array_equal(frames, 5 + np.arange(19))
    assert (jaw >= 0).all() and (jaw <= 1).all() and np.ptp(jaw) > 0.02   # the speaker talks
    frames, yaw = curve_keys(face.animation_data.action, "rotation_euler", 2)
    assert len(frames) == 19 and abs(yaw[0]) < 1e-6 and np.abs(yaw).max() < np.radians(30)
    bpy.ops.ed.undo()
    assert all_names() == before


# ---------------------------------------------------------------------------------------------
# Command line and demo outputs

def test_distinct_frames_pick_the_expression_peaks():
    """A clip at rest with three short expressions: three picks are those peaks (in time
    order), a fourth adds the frame furthest from all three, and asking for more frames than
    there are different expressions returns each once."""
    from hiface_blender.blender.animate import distinct_frames

    t = np.arange(60.0)
    e = np.zeros((60, 3))
    for k, centre in enumerate((12, 31, 47)):
        e[:, k] = np.exp(-0.5 * ((t - centre) / 2.0) ** 2) * (0.6 + 0.2 * k)
    assert distinct_frames(e, 3).tolist() == [12, 31, 47]
    four = distinct_frames(e, 4).tolist()
    assert len(four) == 4 and {12, 31, 47} <= set(four)
    gap = np.linalg.norm(e[:, None] - e[[12, 31, 47]][None], axis=-1).min(1)
    (extra,) = set(four) - {12, 31, 47}
    assert gap[extra] == gap.max()
    steps = np.repeat(np.eye(3), 5, axis=0)         # three expressions held five frames each
    assert len(distinct_frames(steps, 10)) == 3
    assert distinct_frames(e, 1).tolist() == [47]   # the furthest from the mean


def test_write_animated_blend_and_render_strip(face_model, face_result, ict_names, tmp_path):
    from hiface_blender.blender.animate import render_retarget_strip, write_animated_blend

    if not GRID_CLIP.is_file():
        pytest.fail(f"GRID sample missing: {GRID_CLIP}")
    track = make_track(ict_names, n=20, fps=25.0, yaw_deg=np.linspace(0, 15, 20))
    track.source_path = str(GRID_CLIP)
    path = write_animated_blend(face_result, face_model, track, tmp_path / "out" / "anim.blend")
    assert path.is_file()

    out = render_retarget_strip(bpy.data.objects["HiFace"], track, GRID_CLIP,
                                tmp_path / "strip.png", n_frames=3, samples=4, height=128)
    img = bpy.data.images.load(str(out))
    w, h = img.size
    px = np.empty(w * h * img.channels, np.float32)
    img.pixels.foreach_get(px)
    px = px.reshape(h, w, img.channels)[::-1, :, :3]
    # Three columns as wide as the 360x288 video scaled to 128 rows, two rows, 4 px gaps.
    assert (w, h) == (3 * 160 + 4 * 4, 2 * 128 + 3 * 4)   # renders take the video's aspect
    renders = px[2 * 4 + 128:2 * 4 + 256]
    assert renders.std() > 0.05                       # a face, not an empty background

    bpy.ops.wm.open_mainfile(filepath=str(path))
    scene = bpy.context.scene
    assert (scene.render.fps, scene.frame_start, scene.frame_end) == (25, 1, 20)
    face = bpy.data.objects["HiFace"]
    action = face.data.shape_keys.animation_data.action
    assert action["hiface_source"] == str(GRID_CLIP)
    frames, jaw = curve_keys(action, kb_path("jawOpen"))
    np.testing.assert_allclose(jaw, track.expression[:, ict_names.index("jawOpen")], atol=1e-6)
    assert face.animation_data.action is not None and scene.camera is not None
    assert bpy.data.images and all(i.packed_file is not None for i in bpy.data.images
                                   if i.source == "FILE")
