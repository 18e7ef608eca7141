"""The detail comparison picture: Cycles renders of one reconstruction, from the photo's camera
and a three-quarter view, neutral / smiling (mouthSmile_L/R, eyeSquint_L/R at 1) / smiling with
Dynamic Detail 0, laid out as one labelled grid."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector

from . import detail_rig as dr
from .build import add_photo_camera, build_face_object, render_still

SMILE = {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0, "eyeSquint_L": 1.0, "eyeSquint_R": 1.0}
STATES = (("Neutral", {}, 1.0), ("Smile + squint", SMILE, 1.0),
          ("Smile + squint, Dynamic Detail 0", SMILE, 0.0))
THREE_QUARTER_DEG = 35.0


def _key_light(scene, collection, target: Vector, cam_obj) -> bpy.types.Object:
    """A small sun from above and to the camera's left: grazing enough to show relief."""
    sun = bpy.data.lights.new("HiFace Comparison Key", "SUN")
    sun.energy = 3.5
    sun.angle = math.radians(2.0)
    obj = bpy.data.objects.new(sun.name, sun)
    cam = cam_obj.matrix_world.to_3x3()
    towards_cam = (cam_obj.matrix_world.translation - target).normalized()
    direction = (towards_cam + cam @ Vector((-1.2, 0.0, 0.0)) + Vector((0, 0, 1.4))).normalized()
    obj.location = target + direction
    obj.rotation_euler = (-direction).to_track_quat("-Z", "Y").to_euler()
    collection.objects.link(obj)
    return obj


def _border(scene, cam_obj, points: np.ndarray, margin: float = 0.12,
            face_px: int | None = None):
    """Render only the face's projected bounding box (plus a margin, a fraction of
    its size); with face_px, scale the
    render so that box is about face_px pixels tall: the folds are millimetres apart, so they
    need a face several hundred pixels across to show."""
    from bpy_extras.object_utils import world_to_camera_view

    uv = np.array([tuple(world_to_camera_view(scene, cam_obj, Vector(p)))[:2] for p in points])
    lo, hi = uv.min(0), uv.max(0)
    pad = margin * (hi - lo).max()
    lo, hi = lo - pad, hi + pad
    r = scene.render
    if face_px:
        r.resolution_percentage = 100
        tall = (hi[1] - lo[1]) * r.resolution_y
        r.resolution_percentage = int(np.clip(round(100 * face_px / max(tall, 1.0)), 10, 2000))
    r.use_border, r.use_crop_to_border = True, True
    r.border_min_x, r.border_min_y = float(max(lo[0], 0)), float(max(lo[1], 0))
    r.border_max_x, r.border_max_y = float(min(hi[0], 1)), float(min(hi[1], 1))


def _three_quarter(cam_obj, pivot: Vector, degrees: float) -> bpy.types.Object:
    """A copy of the photo camera swung about the head's vertical axis (towards the subject's
    left, which is the camera's right)."""
    cam = cam_obj.copy()
    cam.data = cam_obj.data.copy()
    cam.name = cam.data.name = "HiFace Comparison 3/4"
    cam.data.shift_x = cam.data.shift_y = 0.0
    # Aim at the pivot so the face stays centred after the swing.
    rot = Matrix.Rotation(math.radians(degrees), 4, "Z")
    offset = cam_obj.matrix_world.translation - pivot
    loc = pivot + (rot @ offset.to_4d()).to_3d()
    quat = (pivot - loc).to_track_quat("-Z", "Y")
    cam.matrix_world = Matrix.LocRotScale(loc, quat, None)
    for c in cam_obj.users_collection:
        c.objects.link(cam)
    return cam


def _grid(tiles, labels_rows, labels_cols, out_path: Path) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=18)
    except TypeError:                       # Pillow < 10.1
        font = ImageFont.load_default()
    h = max(t.height for row in tiles for t in row)
    w = max(t.width for row in tiles for t in row)
    top, left, pad = 34, 34, 6
    canvas = Image.new("RGB", (left + len(tiles[0]) * (w + pad), top + len(tiles) * (h + pad)),
                       (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(labels_cols):
        draw.text((left + j * (w + pad) + 6, 8), text, fill=(235, 235, 235), font=font)
    for i, row in enumerate(tiles):
        y = top + i * (h + pad)
        label = Image.new("RGB", (h, left), (24, 24, 24))
        ImageDraw.Draw(label).text((6, 8), labels_rows[i], fill=(235, 235, 235), font=font)
        canvas.paste(label.rotate(90, expand=True), (0, y))
        for j, tile in enumerate(row):
            canvas.paste(tile.convert("RGB"), (left + j * (w + pad), y))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path


def render_detail_comparison(result, model, out_path, samples: int = 24, *,
                             face_px: int = 640, three_quarter_deg: float = THREE_QUARTER_DEG,
                             render_levels: int = 2, mode: str = "MODIFIERS") -> Path:
    """Render the comparison grid to `out_path` (PNG) and return it. Works in a scene of its
    own, removed afterwards; the current file is otherwise left as it was. `mode`: how the
    detail is shown (detail_rig.MODES); bump resolves the folds at pixel scale, finer than the
    render subdivision."""
    from PIL import Image

    if not result.has_detail:
        raise ValueError("the result has no detail maps (reconstruct with detail enabled)")
    out_path = Path(out_path)
    scene = bpy.data.scenes.new("HiFace Comparison")
    collection = scene.collection
    made = []
    try:
        obj = build_face_object(result, model, name="HiFace Comparison", collection=collection)
        made.append(obj)
        obj.modifiers[dr.MOD_SUBSURF].render_levels = render_levels
        dr.set_detail_mode(obj, mode)
        cam = add_photo_camera(result, obj, scene=scene, name="HiFace Comparison Camera")
        made.append(cam)
        world = bpy.data.worlds.new("HiFace Comparison World")
        world.use_nodes = True
        bg = world.node_tree.nodes["Background"]
        bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs["Strength"].default_value = 0.35
        scene.world = world

        # Frame the face itself (the landmark points), where the wrinkles are.
        co = np.empty(len(obj.data.vertices) * 3, np.float32)
        obj.data.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        tris = np.asarray(model.tris)[np.asarray(model.mp_tri)]
        lm = (co[tris] * np.asarray(model.mp_bary, np.float32)[:, :, None]).sum(1)
        mw = np.array(obj.matrix_world)
        pts = lm @ mw[:3, :3].T + mw[:3, 3]
        pivot = Vector(pts.mean(0).tolist())
        quarter = _three_quarter(cam, pivot, three_quarter_deg)
        made.append(quarter)
        views = (("Photo camera", cam), (f"Three-quarter ({three_quarter_deg:.0f} deg)", quarter))
        keys = obj.data.shape_keys.key_blocks
        tiles = []
        with tempfile.TemporaryDirectory() as tmp:
            for v, (_, view_cam) in enumerate(views):
                scene.camera = view_cam
                light = _key_light(scene, collection, pivot, view_cam)
                made.append(light)
                _border(scene, view_cam, pts, face_px=face_px)
                row = []
                for s, (_, keyvals, dynamic) in enumerate(STATES):
                    for kb in keys[1:]:
                        kb.value = keyvals.get(kb.name, 0.0)
                    dr.set_detail(obj, static=1.0, dynamic=dynamic)
                    path = render_still(scene, Path(tmp) / f"v{v}_s{s}.png", samples,
                                        transparent=False)
                    with Image.open(path) as im:
                        row.append(im.copy())
                light.hide_render = True
                tiles.append(row)
        return _grid(tiles, [v[0] for v in views], [s[0] for s in STATES], out_path)
    finally:
        for o in made:
            data = o.data
            bpy.data.objects.remove(o)
            if isinstance(data, bpy.types.Mesh):
                mats = list(data.materials)
                bpy.data.meshes.remove(data)
                for m in mats:
                    if m is not None and m.users == 0:
                        bpy.data.materials.remove(m)
            elif data is not None and data.users == 0:
                if isinstance(data, bpy.types.Camera):
                    bpy.data.cameras.remove(data)
                elif isinstance(data, bpy.types.Light):
                    bpy.data.lights.remove(data)
        world = scene.world
        bpy.data.scenes.remove(scene)
        if world is not None and world.users == 0:
            bpy.data.worlds.remove(world)
