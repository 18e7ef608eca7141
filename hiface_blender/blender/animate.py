"""Keyframes from a tracked performance: shape-key curves and head rotation (bpy + numpy).

One new action on the object's shape keys (one curve per ARKit key the source drives) and,
with head motion, one new action on the object (its rotation). Keys are written in bulk
(`keyframe_points.add` + `foreach_set`), one per scene frame, linearly interpolated: the
source is resampled in time onto the scene's frame rate, so a 25 fps clip plays at the same
speed in a 24 or 30 fps scene. Nothing else in the file is touched, and a failure removes what
was created.

Head rotation is relative to the first tracked pose: that pose is the object's current
orientation, and the change seen by the video camera is applied in the object's own frame,
with the camera standing where Blender's front view does (the face looks along -Y).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Quaternion

from ..core.arkit_csv import match_channels
from ..core.errors import HiFaceError

# Video camera axes (OpenCV: x right, y down, z away from the camera) to the axes of a face at
# rest in Blender, seen from the front: x right, -Z down, +Y away from the viewer.
CV_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_LINEAR = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
_HEAD_GROUP = "Object Transforms"  # Blender's own group for transform channels


@dataclass
class Curves:
    """Source curves sampled at increasing times: what both a video track and a CSV take
    become before they are keyed."""
    times: np.ndarray                 # (N,) seconds from the first sample
    names: list[str]                  # (C,) channel names, any ARKit spelling
    values: np.ndarray                # (N, C) weights in [0, 1]
    head: np.ndarray | None = None    # (N, 3, 3) head rotation relative to the reference pose,
                                      # in video camera (OpenCV) axes
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Target shape keys

def shape_key_channels(obj, names) -> dict[str, tuple[int, ...]]:
    """Map the object's ARKit shape keys to source channels; HiFaceError when there are none."""
    if obj is None or obj.type != "MESH":
        raise HiFaceError(f"'{getattr(obj, 'name', obj)}' is not a mesh: pick a mesh with "
                          "ARKit shape keys")
    key = obj.data.shape_keys
    if key is None or len(key.key_blocks) < 2:
        raise HiFaceError(f"'{obj.name}' has no shape keys: it needs ARKit-named ones "
                          "(jawOpen, mouthSmileLeft or mouthSmile_L...)")
    if not key.use_relative:
        raise HiFaceError(f"'{obj.name}' uses absolute shape keys; ARKit keys must be relative")
    # The reference key (Basis) is never animated.
    keys = [kb.name for kb in key.key_blocks[1:]]
    mapping = match_channels(keys, names)
    if not mapping:
        raise HiFaceError(f"'{obj.name}' has no ARKit shape keys: none of its {len(keys)} "
                          "keys is named like jawOpen, mouthSmileLeft or mouthSmile_L")
    return mapping


# ---------------------------------------------------------------------------------------------
# Time

def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


def resample(times: np.ndarray, values: np.ndarray, fps: float) -> np.ndarray:
    """Linear resampling of (N, ...) samples at `times` onto 0, 1/fps, 2/fps ... up to the
    last sample; returns (M, ...)."""
    times = np.asarray(times, np.float64)
    values = np.asarray(values)
    if len(times) == 1:
        return values[:1].copy()
    m = int(np.floor(times[-1] * fps + 1e-6)) + 1
    t = np.arange(m) / fps
    i = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    w = np.clip((t - times[i]) / (times[i + 1] - times[i]), 0.0, 1.0)
    w = w.reshape((-1,) + (1,) * (values.ndim - 1))
    return (values[i] * (1.0 - w) + values[i + 1] * w).astype(values.dtype, copy=False)


def track_curves(track) -> Curves:
    """A Track as source curves: times from the video's own frame timing (`Track.times`), head
    rotation relative to the first frame where a face was found."""
    expr = np.asarray(track.expression, np.float32)
    names = [str(n) for n in np.asarray(track.exp_names).ravel()]
    if expr.ndim != 2 or expr.shape[0] == 0 or expr.shape[1] != len(names):
        raise HiFaceError(f"the track holds no usable frames (expression {expr.shape}, "
                          f"{len(names)} names)")
    if not np.isfinite(expr).all():
        raise HiFaceError("the track has non-finite expression values")
    fps = float(track.fps)
    if not np.isfinite(fps) or fps <= 0:
        raise HiFaceError(f"the track's frame rate is not usable ({track.fps})")
    times = np.asarray(track.times, np.float64).ravel()
    if len(times) != len(expr) or (len(times) > 1 and not (np.diff(times) > 0).all()):
        times = np.arange(len(expr), dtype=np.float64) / fps   # be robust to a malformed index
    rot = np.asarray(track.rotation, np.float64)
    head = None
    if rot.shape == (len(expr), 3, 3) and np.isfinite(rot).all():
        found = np.flatnonzero(np.asarray(track.face_found, bool).ravel())
        ref = rot[found[0] if len(found) else 0]
        head = rot @ ref.T                                # camera-frame change of pose
    return Curves(times=times, names=names, values=np.clip(expr, 0.0, 1.0), head=head)


# ---------------------------------------------------------------------------------------------
# Actions

def _new_action(name: str, owner: bpy.types.ID):
    """A new action ready to hold curves for `owner`: (action, slot or None, fcurves, groups)."""
    action = bpy.data.actions.new(name)
    if hasattr(action, "slots"):                 # Blender 4.4+: layered actions with slots
        slot = action.slots.new(id_type=owner.id_type, name=owner.name)
        bag = action.layers.new("Layer").strips.new(type="KEYFRAME").channelbag(slot, ensure=True)
        return action, slot, bag.fcurves, bag.groups
    return action, None, action.fcurves, action.groups


def _assign(owner: bpy.types.ID, action, slot) -> None:
    ad = owner.animation_data or owner.animation_data_create()
    ad.action = action
    if slot is not None:
        ad.action_slot = slot


def _key_curve(fcurves, data_path: str, index: int, frames: np.ndarray, values: np.ndarray,
               group=None):
    fc = fcurves.new(data_path, index=index)
    if group is not None:
        fc.group = group
    n = len(frames)
    co = np.empty(2 * n, np.float32)
    co[0::2] = frames
    co[1::2] = values
    points = fc.keyframe_points
    points.add(n)
    points.foreach_set("co", co)
    points.foreach_set("interpolation", np.full(n, _LINEAR, np.int32))
    fc.update()
    return fc


@contextlib.contextmanager
def _undo_on_error(owners):
    """On failure, remove the actions created inside and give each owner back its previous
    action (or no animation data if it had none)."""
    before_actions = {a.as_pointer() for a in bpy.data.actions}
    saved = []
    for owner in owners:
        ad = owner.animation_data
        slot = getattr(ad, "action_slot", None) if ad is not None else None
        saved.append((owner, ad is not None, ad.action if ad else None, slot))
    try:
        yield
    except BaseException:
        for owner, had, action, slot in saved:
            if not had:
                owner.animation_data_clear()
            elif owner.animation_data is not None:
                owner.animation_data.action = action
                if slot is not None:
                    owner.animation_data.action_slot = slot
        for a in [a for a in bpy.data.actions if a.as_pointer() not in before_actions]:
            bpy.data.actions.remove(a)
        raise


def _keep_replaced(owner: bpy.types.ID, notes: list[str]) -> None:
    """An action about to be replaced keeps a fake user, so the artist's work is not dropped
    when the file is saved."""
    ad = owner.animation_data
    old = ad.action if ad is not None else None
    if old is not None:
        if old.users <= 1 and not old.use_fake_user:
            old.use_fake_user = True
        notes.append(f"'{old.name}' was replaced on {owner.name} (kept in the file)")


def _head_keys(obj, head_rel: np.ndarray) -> tuple[str, np.ndarray]:
    """Per frame rotation values for the object's rotation mode: (data path, (M, k))."""
    _loc, rest, _scale = obj.matrix_basis.decompose()
    c = CV_TO_BLENDER
    local = np.einsum("ij,fjk,lk->fil", c, head_rel, c)   # C @ R @ C^T per frame
    quats = [rest @ Matrix(m.tolist()).to_quaternion() for m in local]
    mode = obj.rotation_mode
    if mode == "QUATERNION":
        out, prev = [], None
        for q in quats:
            if prev is not None and prev.dot(q) < 0:      # stay on one hemisphere
                q = -q
            out.append(tuple(q))
            prev = q
        return "rotation_quaternion", np.array(out)
    if mode == "AXIS_ANGLE":
        out = []
        for q in quats:
            axis, angle = q.to_axis_angle()
            out.append((angle, *axis))
        return "rotation_axis_angle", np.array(out)
    out, prev = [], obj.rotation_euler.copy()
    for q in quats:
        e = q.to_euler(mode, prev)                        # continuous with the previous key
        out.append(tuple(e))
        prev = e
    return "rotation_euler", np.array(out)


def _slerp_resample(times, head, fps) -> np.ndarray:
    """Resample rotation matrices by normalised linear blending of sign-aligned quaternions."""
    qs = np.array([tuple(Matrix(m.tolist()).to_quaternion()) for m in head])
    for i in range(1, len(qs)):
        if np.dot(qs[i - 1], qs[i]) < 0:
            qs[i] = -qs[i]
    q = resample(times, qs, fps)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.array([np.array(Quaternion(v).to_matrix()) for v in q])


def apply_curves(obj, curves: Curves, *, start_frame: int = 1, fps: float | None = None,
                 head_motion: bool = True, action_name: str | None = None,
                 notes: list[str] | None = None) -> bpy.types.Action:
    """Key `curves` onto the object's ARKit shape keys (and its rotation with head_motion),
    one key per scene frame from start_frame. Returns the shape-key action."""
    mapping = shape_key_channels(obj, curves.names)
    fps = float(fps) if fps else scene_fps(bpy.context.scene)
    if not np.isfinite(fps) or fps <= 0:
        raise HiFaceError(f"frame rate must be positive, got {fps}")
    times = np.asarray(curves.times, np.float64)
    values = np.asarray(curves.values, np.float32)
    if values.ndim != 2 or len(times) != len(values) or len(times) == 0:
        raise HiFaceError("no frames to key")
    if len(times) > 1 and (np.diff(times) <= 0).any():
        raise HiFaceError("sample times must increase")
    notes = notes if notes is not None else []

    # Everything that can fail on the data is computed before any datablock is touched.
    resampled = resample(times, values, fps)
    frames = float(start_frame) + np.arange(len(resampled), dtype=np.float64)
    keyed = {k: resampled[:, list(ch)].mean(axis=1) for k, ch in mapping.items()}
    head_path = head_values = None
    if head_motion and curves.head is not None:
        head_path, head_values = _head_keys(obj, _slerp_resample(times, curves.head, fps))
    elif head_motion:
        notes.append("the source has no head rotation")

    name = action_name or f"{obj.name} Retarget"
    key = obj.data.shape_keys
    owners = [key] + ([obj] if head_values is not None else [])
    with _undo_on_error(owners):
        _keep_replaced(key, notes)
        action, slot, fcurves, _groups = _new_action(name, key)
        for kb_name, v in keyed.items():
            path = f'key_blocks["{bpy.utils.escape_identifier(kb_name)}"].value'
            _key_curve(fcurves, path, 0, frames, v)
        _assign(key, action, slot)
        if head_values is not None:
            _keep_replaced(obj, notes)
            head, hslot, hcurves, hgroups = _new_action(f"{name} Head", obj)
            group = hgroups.new(_HEAD_GROUP)
            for i in range(head_values.shape[1]):
                _key_curve(hcurves, head_path, i, frames, head_values[:, i], group)
            _assign(obj, head, hslot)
    notes.append(f"{len(keyed)} shape keys keyed on frames {int(frames[0])}-{int(frames[-1])}")
    return action


def apply_track(obj, track, *, start_frame: int = 1, scene_fps: float | None = None,
                head_motion: bool = True, action_name: str | None = None,
                notes: list[str] | None = None) -> bpy.types.Action:
    """Key a video Track onto `obj` (a HiFace face or any mesh with ARKit shape keys).

    The track's source frame rate is mapped onto `scene_fps` (default: the current scene's)
    by resampling, the first key lands on `start_frame`. With head_motion the object's
    rotation is keyed in a second action, relative to the first tracked pose. Returns the
    shape-key action; raises HiFaceError and changes nothing when the object has no ARKit
    shape keys or the track is unusable."""
    return apply_curves(obj, track_curves(track), start_frame=start_frame, fps=scene_fps,
                        head_motion=head_motion, action_name=action_name, notes=notes)


# ---------------------------------------------------------------------------------------------
# Benchmark

def bench_keyframes(n_frames: int = 1000, repeats: int = 5, head_motion: bool = True) -> dict:
    """Seconds to key n_frames x 53 shape keys (and head rotation) on a HiFace-named mesh;
    median of `repeats`. Creates its own mesh and removes everything it made."""
    from ..core.landmarks import MP_TO_ARKIT
    from ..core.result import Track

    names = sorted({n for v in MP_TO_ARKIT.values() for n in v})
    rng = np.random.default_rng(0)
    t = np.arange(n_frames)
    yaw = np.radians(15.0) * np.sin(t / 40.0)
    rot = np.zeros((n_frames, 3, 3), np.float32)
    rot[:, 0, 0] = rot[:, 2, 2] = np.cos(yaw)
    rot[:, 0, 2], rot[:, 2, 0] = np.sin(yaw), -np.sin(yaw)
    rot[:, 1, 1] = 1.0
    track = Track(expression=rng.uniform(0, 1, (n_frames, len(names))).astype(np.float32),
                  exp_names=np.array(names), rotation=rot,
                  translation=np.zeros((n_frames, 3), np.float32),
                  confidence=np.ones(n_frames, np.float32), face_found=np.ones(n_frames, bool),
                  frame_indices=t.astype(np.int32), fps=30.0,
                  intrinsics=np.eye(3, dtype=np.float32), image_size=np.array([288, 360]))
    mesh = bpy.data.meshes.new("HiFace Bench")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    obj = bpy.data.objects.new("HiFace Bench", mesh)
    obj.shape_key_add(name="Basis")
    for n in names:
        obj.shape_key_add(name=n)
    runs = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            action = apply_track(obj, track, scene_fps=30.0, head_motion=head_motion)
            runs.append(time.perf_counter() - t0)
            head = obj.animation_data.action if obj.animation_data else None
            for a in (action, head):
                if a is not None:
                    bpy.data.actions.remove(a)
    finally:
        bpy.data.objects.remove(obj)
        bpy.data.meshes.remove(mesh)   # its shape keys go with it
    return {"frames": n_frames, "shape_keys": len(names), "head_motion": head_motion,
            "median_s": statistics.median(runs), "runs_s": runs}


# ---------------------------------------------------------------------------------------------
# Files and pictures for the command line and the demo

def set_scene_rate(scene, fps: float) -> None:
    """Scene frame rate as Blender spells it: 29.97 becomes 30 / 1.001."""
    whole = max(1, int(round(fps)))
    scene.render.fps = whole
    scene.render.fps_base = whole / float(fps)


def add_front_camera(obj, scene=None, *, name: str = "HiFace Front Camera", lens: float = 85.0,
                     margin: float = 1.1) -> bpy.types.Object:
    """A camera on the face's -Y side looking at it, framing its rest bounding box; made the
    scene camera."""
    from mathutils import Euler, Vector

    scene = scene or bpy.context.scene
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    lo = Vector(tuple(min(c[i] for c in corners) for i in range(3)))
    hi = Vector(tuple(max(c[i] for c in corners) for i in range(3)))
    centre = (lo + hi) / 2
    cam = bpy.data.cameras.new(name)
    cam.lens, cam.sensor_fit, cam.sensor_width = lens, "AUTO", 36.0
    extent = max(hi.x - lo.x, hi.z - lo.z) * margin
    distance = extent * lens / cam.sensor_width + (hi.y - lo.y) / 2
    cam.clip_start, cam.clip_end = 0.01, 100.0
    cam_obj = bpy.data.objects.new(name, cam)
    cam_obj.location = centre - Vector((0.0, distance, 0.0))
    cam_obj.rotation_euler = Euler((np.pi / 2, 0.0, 0.0))   # look along +Y, Z up
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    return cam_obj


def animated_scene(face, model, track, *, name: str = "HiFace", head_motion: bool = True,
                   notes: list[str] | None = None) -> bpy.types.Object:
    """Empty the current file and build in it the face from `face` (a FaceResult) with `track`
    keyed on it from frame 1, the scene at the video's frame rate and frame range, and a front
    camera. Returns the face object. Meant for the command line."""
    from .build import build_face_object

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    set_scene_rate(scene, float(track.fps))
    obj = build_face_object(face, model, name=name)
    action = apply_track(obj, track, start_frame=1, head_motion=head_motion, notes=notes)
    action["hiface_source"] = str(track.source_path)
    first, last = action.frame_range
    scene.frame_start, scene.frame_end = int(first), int(last)
    scene.frame_set(int(first))
    add_front_camera(obj, scene)
    return obj


def save_blend(path) -> Path:
    """Save the current file to `path` with its images packed (the photo texture travels
    inside the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.file.pack_all()
    bpy.ops.wm.save_as_mainfile(filepath=str(path), check_existing=False, compress=True)
    return path


def write_animated_blend(face, model, track, path, *, name: str = "HiFace",
                         head_motion: bool = True, notes: list[str] | None = None):
    """`animated_scene`, saved as a new .blend. Replaces the current file's contents."""
    animated_scene(face, model, track, name=name, head_motion=head_motion, notes=notes)
    return save_blend(path)


def _resize(rgb: np.ndarray, height: int) -> np.ndarray:
    """Bilinear resize of an (H, W, C) float image to the given height, aspect kept."""
    h, w = rgb.shape[:2]
    width = max(1, int(round(w * height / h)))
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = rgb[y0][:, x0] * (1 - fx) + rgb[y0][:, x1] * fx
    bottom = rgb[y1][:, x0] * (1 - fx) + rgb[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _read_png(path) -> np.ndarray:
    """(H, W, 3) float sRGB values, top row first."""
    image = bpy.data.images.load(str(path))
    try:
        w, h = image.size
        px = np.empty(w * h * image.channels, np.float32)
        image.pixels.foreach_get(px)
        return px.reshape(h, w, image.channels)[::-1, :, :3].copy()
    finally:
        bpy.data.images.remove(image)


def _write_png(rgb: np.ndarray, path) -> None:
    h, w = rgb.shape[:2]
    image = bpy.data.images.new("HiFace Strip", w, h, alpha=False)
    try:
        rgba = np.ones((h, w, 4), np.float32)
        rgba[..., :3] = np.clip(rgb[::-1], 0.0, 1.0)
        image.pixels.foreach_set(rgba.ravel())
        image.filepath_raw = str(path)
        image.file_format = "PNG"
        image.save()
    finally:
        bpy.data.images.remove(image)


def distinct_frames(expression: np.ndarray, n: int) -> np.ndarray:
    """Indices of n frames whose expressions differ most from one another, in time order:
    the frame furthest from the clip's mean expression, then repeatedly the frame furthest from
    all picked so far (a strip of evenly spaced frames often shows the same rest face)."""
    e = np.asarray(expression, np.float64)
    n = max(1, min(int(n), len(e)))
    picks = [int(np.argmax(np.linalg.norm(e - e.mean(0), axis=1)))]
    dist = np.linalg.norm(e - e[picks[0]], axis=1)
    while len(picks) < n:
        i = int(np.argmax(dist))
        if dist[i] <= 0.0:        # fewer distinct expressions than frames asked for
            break
        picks.append(i)
        dist = np.minimum(dist, np.linalg.norm(e - e[i], axis=1))
    return np.sort(np.array(picks, int))


def render_retarget_strip(obj, track, video_path, out_path, *, n_frames: int = 4,
                          indices=None, samples: int = 8, height: int = 256,
                          start_frame: int = 1) -> Path:
    """One PNG: video frames on top, the retargeted face rendered in Cycles at the same moments
    below. `obj` must already carry the track's keys from `start_frame` (apply_track or
    write_animated_blend); `indices` picks track frames (default: n_frames evenly spaced).
    Renders through the scene camera (a front camera is added if there is none) and changes
    the scene's render settings: meant for the command line and the demo."""
    import tempfile

    from ..core.video import VideoReader
    from .build import render_still

    scene = bpy.context.scene
    n = track.n_frames
    picks = (np.asarray(indices, int) if indices is not None
             else np.unique(np.linspace(0, n - 1, max(1, min(n_frames, n))).round().astype(int)))
    src = np.asarray(track.frame_indices, int)
    wanted = {int(src[i]): i for i in picks}
    video: dict[int, np.ndarray] = {}
    with VideoReader(video_path, start=min(wanted), end=max(wanted) + 1) as reader:
        for idx, rgb in reader:
            if idx in wanted:
                video[wanted[idx]] = rgb.astype(np.float32) / 255.0
    missing = [int(src[i]) for i in picks if i not in video]
    if missing:
        raise HiFaceError(f"could not read video frames {missing} of {Path(video_path).name}")

    if scene.camera is None:
        add_front_camera(obj, scene)
    vh, vw = next(iter(video.values())).shape[:2]
    scene.render.resolution_y = int(height)
    scene.render.resolution_x = max(1, int(round(height * vw / vh)))   # the video's aspect
    scene.render.resolution_percentage = 100
    fps = scene_fps(scene)
    times = track.times
    top, bottom = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in picks:
            scene.frame_set(int(start_frame + round(times[i] * fps)))
            png = render_still(scene, Path(tmp) / f"f{i:05d}.png", samples=samples,
                               transparent=False)
            bottom.append(_read_png(png))
            top.append(_resize(video[i], int(height)))
    gap = 4
    row_w = [max(a.shape[1], b.shape[1]) for a, b in zip(top, bottom)]
    strip = np.full((2 * height + 3 * gap, sum(row_w) + gap * (len(row_w) + 1), 3), 0.12,
                    np.float32)
    x = gap
    for a, b, w in zip(top, bottom, row_w):
        strip[gap:gap + height, x + (w - a.shape[1]) // 2:][:, :a.shape[1]] = a
        y = 2 * gap + height
        strip[y:y + height, x + (w - b.shape[1]) // 2:][:, :b.shape[1]] = b
        x += w + gap
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(strip, out_path)
    return out_path
