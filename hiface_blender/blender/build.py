"""Turn a FaceResult into a Blender object, a matching photo camera, and a quick still render.

bpy and numpy only (never torch). All per-vertex data goes through `foreach_set` from numpy.
Axes: ICT is cm, Y up, face along +Z; Blender is m, Z up, face along -Y, so
blender = (x, -z, y) / 100, with the mesh shifted so the object origin sits between the ears.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..core.gaze import EYE_PARTS, eye_centres, eye_vertices, sphere_centre
from ..core.model_data import IRIS_L, IRIS_R, PARTS
from ..core.result import AXES_ICT_TO_CV
from . import detail_rig, eye_rig, materials

# Rows map ICT axes to Blender axes: a rotation of +90 degrees about X.
ICT_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
CM_TO_M = 0.01
# Blender camera axes (x right, y up, looking along -z) versus OpenCV (x right, y down, z forward).
CV_TO_BLENDER_CAMERA = np.diag([1.0, -1.0, -1.0])

_FACE_PART = [p[0] for p in PARTS].index("face")


def ict_to_blender(v: np.ndarray, origin_cm: np.ndarray | None = None) -> np.ndarray:
    """(..., 3) ICT cm -> Blender metres (float32); points when origin_cm is given, else offsets."""
    v = np.asarray(v, np.float64)
    if origin_cm is not None:
        v = v - origin_cm
    return (v @ ICT_TO_BLENDER.T * CM_TO_M).astype(np.float32)


def head_origin_cm(neutral_cm: np.ndarray, vertex_part: np.ndarray | None) -> np.ndarray:
    """The point between the ears: midway between the two x-extremes of the face part
    (ICT's face part includes the ears; the head/neck part would pick the shoulders)."""
    idx = (np.flatnonzero(vertex_part == _FACE_PART) if vertex_part is not None
           else np.arange(9409))
    x = neutral_cm[idx, 0]
    return (neutral_cm[idx[x.argmin()]] + neutral_cm[idx[x.argmax()]]).astype(np.float64) * 0.5


def _eye_radius(neutral_cm: np.ndarray, vertex_part: np.ndarray | None) -> np.ndarray:
    """Per eyeball vertex: distance from the optical axis over the eyeball's radius, on the
    front half (the shaders put the limbus at materials.EYE_LIMBUS); 2 on the back of the
    outer shell and elsewhere. ICT's "iris" range is a whole inner ball (iris and sclera
    texture) inside a clear-fronted outer shell, so the iris size cannot come from it."""
    out = np.full(len(neutral_cm), 2.0, np.float32)
    if vertex_part is None:
        return out
    for part, (a, b) in zip(EYE_PARTS, (IRIS_L, IRIS_R)):
        sel = np.flatnonzero(vertex_part == part)
        in_iris = (sel >= a) & (sel < b)
        if len(sel) < 4 or not in_iris.any() or in_iris.all():
            continue
        p = neutral_cm[sel]
        centre = sphere_centre(p)
        # Optical axis through the cornea apex: the neutral eyes look along ICT +Z.
        axis = p[~in_iris][p[~in_iris, 2].argmax()] - centre
        axis /= np.linalg.norm(axis) + 1e-12
        d = p - centre
        along = d @ axis
        radial = np.linalg.norm(d - np.outer(along, axis), axis=1)
        rim = max(float(radial[in_iris].max()), 1e-9)
        # The back of the inner ball is never seen: give it the sclera's value.
        out[sel] = np.where(along > 0, radial / rim, np.where(in_iris, 1.0, 2.0))
    return out


@contextlib.contextmanager
def rollback_on_error():
    """Remove every datablock created inside the block if it raises: failure leaves no trace."""
    kinds = ("objects", "cameras", "meshes", "materials", "images", "node_groups", "textures")
    before = {k: {id_.as_pointer() for id_ in getattr(bpy.data, k)} for k in kinds}
    try:
        yield
    except BaseException:
        for k in kinds:
            coll = getattr(bpy.data, k)
            for id_ in [i for i in coll if i.as_pointer() not in before[k]]:
                coll.remove(id_)
        raise


def _fill_mesh(mesh: bpy.types.Mesh, co: np.ndarray, model) -> None:
    loop_vert = np.ascontiguousarray(model.loop_vert, np.int32)
    poly_start = np.ascontiguousarray(model.poly_start, np.int32)
    mesh.vertices.add(len(co))
    mesh.vertices.foreach_set("co", co.ravel())
    mesh.loops.add(len(loop_vert))
    mesh.loops.foreach_set("vertex_index", loop_vert)
    mesh.polygons.add(len(poly_start))
    mesh.polygons.foreach_set("loop_start", poly_start)
    mesh.polygons.foreach_set("material_index",
                              np.ascontiguousarray(model.poly_material, np.int32))
    uv = mesh.uv_layers.new(name="UVMap")
    uv.uv.foreach_set("vector", np.ascontiguousarray(
        np.asarray(model.uvs, np.float32)[model.loop_uv]).ravel())
    mesh.update(calc_edges=True)
    mesh.shade_smooth()


def _set_properties(obj, result, origin_cm) -> None:
    h, w = (int(x) for x in np.asarray(result.image_size).ravel()[:2])
    obj["hiface"] = 1
    obj["hiface_version"] = int(result.version)
    obj["hiface_source"] = str(result.source_path)
    obj["hiface_identity"] = np.asarray(result.identity, np.float64).ravel().tolist()
    obj["hiface_expression"] = np.asarray(result.expression, np.float64).ravel().tolist()
    obj["hiface_intrinsics"] = np.asarray(result.intrinsics, np.float64).ravel().tolist()
    obj["hiface_rotation"] = np.asarray(result.rotation, np.float64).ravel().tolist()
    obj["hiface_translation_mm"] = np.asarray(result.translation, np.float64).ravel().tolist()
    obj["hiface_image_size"] = [h, w]
    obj["hiface_origin_cm"] = np.asarray(origin_cm, np.float64).tolist()
    if result.report:
        obj["hiface_report"] = json.dumps(result.report, default=str)
    descriptions = {
        "hiface_source": "Photo the face was reconstructed from",
        "hiface_identity": "ICT identity coefficients (unit-variance PCA modes)",
        "hiface_expression": "Expression weights seen in the photo (shape key order)",
        "hiface_intrinsics": "Photo camera matrix K in pixels, row-major",
        "hiface_rotation": "Model (OpenCV axes) to photo camera rotation, row-major",
        "hiface_translation_mm": "Model to photo camera translation, millimetres",
        "hiface_image_size": "Photo size as fitted: height, width (pixels)",
        "hiface_origin_cm": "ICT point (cm) placed at the object origin",
    }
    for key, text in descriptions.items():
        obj.id_properties_ui(key).update(description=text)


def build_face_object(result, model, *, name: str = "HiFace",
                      collection: bpy.types.Collection | None = None,
                      detail: bool = True) -> bpy.types.Object:
    """One object with the ICT topology and UVs, the person's neutral as Basis, 53 ARKit-named
    expression shape keys set to the photo's expression, per-part materials and the photo
    texture packed into the .blend, the eye rig (blender.eye_rig: the eyeballs turn with the
    eyeLook keys); with `detail` and a result that has detail maps, the detail rig
    (blender.detail_rig). Raises (and creates nothing) on failure."""
    names = [str(n) for n in np.asarray(result.exp_names).ravel()]
    if names != [str(n) for n in np.asarray(model.exp_names).ravel()]:
        raise ValueError("the result's expression names do not match the face model's")
    neutral_cm = np.asarray(result.neutral_vertices, np.float64)
    exp_basis = np.asarray(model.exp_basis)
    if neutral_cm.shape != exp_basis.shape[1:]:
        raise ValueError(f"result has {neutral_cm.shape[0]} vertices, "
                         f"the face model {exp_basis.shape[1]}")
    vertex_part = getattr(model, "vertex_part", None)
    origin_cm = head_origin_cm(neutral_cm, vertex_part)
    basis = ict_to_blender(neutral_cm, origin_cm)
    weights = np.clip(np.asarray(result.expression, np.float64).ravel(), 0.0, 1.0)
    if collection is None:
        collection = bpy.context.scene.collection

    with rollback_on_error():
        mesh = bpy.data.meshes.new(name)
        _fill_mesh(mesh, basis, model)
        eye = mesh.attributes.new(materials.EYE_ATTRIBUTE, "FLOAT", "POINT")
        eye.data.foreach_set("value", _eye_radius(neutral_cm, vertex_part))

        texture = np.asarray(result.texture)
        image = (materials.image_from_rgb(f"{name} Texture", texture)
                 if texture.ndim == 3 and texture.size else None)
        skin = materials.skin_colour(texture, getattr(result, "texture_mask", None)) \
            if image is not None else (0.6, 0.45, 0.38)
        iris = materials.iris_linear(getattr(result, "iris_rgb", ()))
        for mat in materials.make_materials(name, model.material_names, image, skin, iris):
            mesh.materials.append(mat)

        obj = bpy.data.objects.new(name, mesh)
        obj.shape_key_add(name="Basis", from_mix=False)
        mesh.shape_keys.use_relative = True
        offsets = np.empty_like(basis)
        for k, key_name in enumerate(names):
            kb = obj.shape_key_add(name=key_name, from_mix=False)
            # Same mapping as ict_to_blender, written out to avoid a (V,3)@(3,3) per key.
            e = exp_basis[k]
            offsets[:, 0] = e[:, 0]
            offsets[:, 1] = -e[:, 2]
            offsets[:, 2] = e[:, 1]
            offsets *= CM_TO_M
            offsets += basis
            kb.points.foreach_set("co", offsets.ravel())
            kb.slider_min, kb.slider_max = 0.0, 1.0
            kb.value = float(weights[k])
        obj.active_shape_key_index = 0
        _set_properties(obj, result, origin_cm)
        eyes = eye_vertices(vertex_part)
        if all(len(idx) >= 4 for idx in eyes):
            eyeball = np.zeros(len(basis), np.int32)
            for i, idx in enumerate(eyes):
                eyeball[idx] = i + 1
            eye_rig.add_eye_rig(obj, eyeball,
                                ict_to_blender(eye_centres(neutral_cm, vertex_part), origin_cm))
        if detail and getattr(result, "has_detail", False):
            detail_rig.add_detail_rig(obj, result.detail_static, result.detail_compressed,
                                      result.detail_stretched)
        collection.objects.link(obj)
    return obj


def model_to_camera_cv(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """Rigid map from the object's local space (m) to the photo's OpenCV camera (m):
    x_cam = R @ x_local + t, read from the properties the builder stored."""
    rot = np.asarray(obj["hiface_rotation"], np.float64).reshape(3, 3)
    t_mm = np.asarray(obj["hiface_translation_mm"], np.float64)
    origin_cm = np.asarray(obj["hiface_origin_cm"], np.float64)
    # x_cam_mm = rot @ (D * 10 * x_ict) + t with x_ict = 100 * B^T x_local + origin_cm.
    rd = rot @ np.diag(AXES_ICT_TO_CV.astype(np.float64))
    r = rd @ ICT_TO_BLENDER.T
    t = (10.0 * rd @ origin_cm + t_mm) / 1000.0
    return r, t


def add_photo_camera(result, obj: bpy.types.Object, *, name: str = "HiFace Camera",
                     collection: bpy.types.Collection | None = None,
                     photo: bpy.types.Image | None = None,
                     scene: bpy.types.Scene | None = None,
                     set_scene: bool = True) -> bpy.types.Object:
    """A camera whose render at the photo's resolution lies exactly over the photo (pixel
    centres at integer coordinates, as in OpenCV). Follows the object's current transform
    (`obj.matrix_world`); with set_scene the scene renders through it at the photo's size.
    `result` may be None: the intrinsics and photo size stored on the object are used.
    `photo`, if given, is shown behind the face in camera view."""
    if result is None:
        k = np.asarray(obj["hiface_intrinsics"], np.float64).reshape(3, 3)
        h, w = (int(x) for x in obj["hiface_image_size"])
    else:
        k = np.asarray(result.intrinsics, np.float64).reshape(3, 3)
        h, w = (int(x) for x in np.asarray(result.image_size).ravel()[:2])
    fx, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    scene = scene or bpy.context.scene
    if collection is None:
        collection = scene.collection

    with rollback_on_error():
        cam = bpy.data.cameras.new(name)
        cam.sensor_fit = "HORIZONTAL"           # sensor width <-> image width, any aspect
        cam.sensor_width = 36.0
        cam.lens = fx * cam.sensor_width / w
        # With a horizontal fit, shifts are fractions of the image width (whatever the aspect);
        # OpenCV's image centre is ((w-1)/2, (h-1)/2).
        cam.shift_x = ((w - 1) * 0.5 - cx) / w
        cam.shift_y = (cy - (h - 1) * 0.5) / w
        cam.clip_start, cam.clip_end = 0.01, 100.0
        if photo is not None:
            cam.show_background_images = True
            bg = cam.background_images.new()
            bg.image = photo
            bg.frame_method = "STRETCH"
            bg.alpha = 0.6
        cam_obj = bpy.data.objects.new(name, cam)

        r, t = model_to_camera_cv(obj)
        cam_to_local = np.eye(4)
        cam_to_local[:3, :3] = r.T @ CV_TO_BLENDER_CAMERA
        cam_to_local[:3, 3] = -r.T @ t
        world = obj.matrix_world @ Matrix(cam_to_local.tolist())
        loc, rot, _scale = world.decompose()  # a scaled face keeps a unit-scale camera
        cam_obj.matrix_world = Matrix.LocRotScale(loc, rot, None)
        cam_obj["hiface_camera"] = 1
        cam_obj["hiface_face"] = obj.name
        collection.objects.link(cam_obj)

        if set_scene:
            scene.camera = cam_obj
            render = scene.render
            render.resolution_x, render.resolution_y = w, h
            render.resolution_percentage = 100
            # The fit uses square pixels (fx == fy); the lens follows fx.
            render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    return cam_obj


def _oidn_available() -> bool:
    try:
        import _cycles
        return bool(getattr(_cycles, "with_openimagedenoise", False))
    except ImportError:
        return False


def render_still(scene: bpy.types.Scene, filepath, samples: int = 16, *,
                 transparent: bool = True) -> Path:
    """A quick Cycles CPU render through the scene camera to a PNG (RGBA when transparent, so it
    can be laid over the photo). Uses the Standard view transform so the texture keeps the
    photo's colours, and adds an even white world if the scene has none."""
    if scene.camera is None:
        raise ValueError(f"scene {scene.name!r} has no camera")
    filepath = Path(filepath)
    filepath.parent.mkdir(parents=True, exist_ok=True)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(samples)
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = _oidn_available()
    if scene.cycles.use_denoising:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    scene.render.film_transparent = transparent
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    if scene.world is None:
        world = bpy.data.worlds.new("HiFace Studio")
        world.use_nodes = True
        bg = world.node_tree.nodes.get("Background")
        bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs["Strength"].default_value = 1.0
        scene.world = world
    settings = scene.render.image_settings
    settings.file_format = "PNG"
    settings.color_mode = "RGBA" if transparent else "RGB"
    settings.color_depth = "8"
    scene.render.filepath = str(filepath)
    bpy.ops.render.render(write_still=True, scene=scene.name)
    return filepath
