"""Operators: thin wrappers that validate context, start a job or call one builder function."""
from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty
from mathutils import Matrix

from . import jobs, prefs

UNDO_MESSAGE = "Reconstruct Face"
_PHOTO_SIDE = 2048  # the camera's reference photo is downsampled to at most this side


def is_hiface_object(obj) -> bool:
    return (obj is not None and obj.type == "MESH" and obj.get("hiface") == 1
            and obj.data.shape_keys is not None)


def image_to_rgb(image: bpy.types.Image) -> np.ndarray:
    """Copy a Blender image to an HxWx3 sRGB uint8 array, top row first (main thread only)."""
    w, h = image.size
    n = len(image.pixels)  # loads the buffer if needed
    if w == 0 or h == 0 or n == 0:
        raise ValueError(f"Image '{image.name}' has no pixel data (is its file missing?)")
    px = np.empty(n, np.float32)
    image.pixels.foreach_get(px)
    c = n // (w * h)
    px = px.reshape(h, w, c)[::-1]           # Blender stores rows bottom-up
    rgb = px[..., :3] if c >= 3 else np.repeat(px[..., :1], 3, axis=2)
    if c in (2, 4):                          # composite on white, as photo files are
        a = px[..., c - 1:c]
        rgb = rgb * a + (1.0 - a)
    if image.is_float:                       # float buffers hold scene-linear values
        rgb = np.clip(rgb, 0.0, 1.0)
        rgb = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * rgb ** (1 / 2.4) - 0.055)
    return np.ascontiguousarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _reference_photo(name: str, rgb: np.ndarray) -> bpy.types.Image:
    from ..blender.materials import image_from_rgb
    step = int(np.ceil(max(rgb.shape[:2]) / _PHOTO_SIDE))
    return image_from_rgb(name, np.ascontiguousarray(rgb[::step, ::step]))


def _make_apply(context, *, name: str, add_camera: bool, photo_image: str = ""):
    """The main-thread callback for a finished job, bound to where the operator was run."""
    scene_name = context.scene.name
    collection_name = context.collection.name if context.collection else ""
    location = tuple(context.scene.cursor.location)

    def apply(payload: jobs.Payload) -> str | None:
        from ..blender.build import add_photo_camera, build_face_object, rollback_on_error

        scene = bpy.data.scenes.get(scene_name) or bpy.context.scene
        collection = bpy.data.collections.get(collection_name) if collection_name else None
        if collection is None or collection not in scene.collection.children_recursive:
            collection = scene.collection
        with rollback_on_error():
            obj = build_face_object(payload.result, payload.model, name=name,
                                    collection=collection)
            obj.matrix_world = Matrix.Translation(location)
            if add_camera:
                photo = bpy.data.images.get(photo_image) if photo_image else None
                if photo is None:
                    photo = _reference_photo(f"{name} Photo", payload.rgb)
                add_photo_camera(payload.result, obj, name=f"{name} Camera",
                                 collection=collection, photo=photo, scene=scene)

        view_layer = bpy.context.view_layer
        if view_layer is None or bpy.context.scene != scene:
            view_layer = scene.view_layers[0]
        if bpy.context.mode == "OBJECT":
            for o in view_layer.objects:
                o.select_set(False, view_layer=view_layer)
            obj.select_set(True, view_layer=view_layer)
            view_layer.objects.active = obj
        bpy.ops.ed.undo_push(message=UNDO_MESSAGE)
        return "; ".join(payload.notes) or None

    return apply


def start_job(op, context, request, apply, *, watcher: str, kind: str = jobs.RECONSTRUCT,
              work=None) -> set[str]:
    """Start a background job for an operator and, with a window to show it in, its watcher."""
    try:
        jobs.start(request, apply, kind=kind, work=work)
    except RuntimeError as exc:
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    if context.window is not None and not bpy.app.background:
        getattr(bpy.ops.hiface, watcher)("INVOKE_DEFAULT")
    return {"FINISHED"}


def _start(op, context, request: jobs.Request, apply) -> set[str]:
    return start_job(op, context, request, apply, watcher="watch_job")


class WatchJobMixin:
    """Modal watcher of one job kind: status bar text, Esc to cancel, a report of how it ended.
    Shared by every kind so they behave alike."""
    job_kind = jobs.RECONSTRUCT
    job_label = "HiFace"                                # prefix of the status text and reports
    cancelled_message = "HiFace: cancelled, nothing was changed"

    def invoke(self, context, event):
        if not jobs.is_running(self.job_kind):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _end(self, context):
        context.window_manager.event_timer_remove(self._timer)
        if context.workspace is not None:
            context.workspace.status_text_set(None)

    def modal(self, context, event):
        if not jobs.is_running(self.job_kind):
            self._end(context)
            state, message = jobs.last_outcome(self.job_kind)
            if state == "error":
                self.report({"ERROR"}, message)
            elif state == "done":
                self.report({"INFO"}, f"{self.job_label}: {message}")
            elif state == "cancelled":
                self.report({"WARNING"}, self.cancelled_message)
            return {"FINISHED"}
        if event.type == "ESC" and event.value == "PRESS":
            jobs.cancel(self.job_kind)
            return {"RUNNING_MODAL"}
        if event.type == "TIMER" and context.workspace is not None:
            wm = context.window_manager
            kind = jobs.get_kind(self.job_kind)
            context.workspace.status_text_set(
                f"{self.job_label}: {getattr(wm, kind.status_prop)} "
                f"({getattr(wm, kind.progress_prop):.0%})    Esc: cancel")
        return {"PASS_THROUGH"}


class CancelJobMixin:
    """Stop the running job of `job_kind`."""
    job_kind = jobs.RECONSTRUCT

    @classmethod
    def poll(cls, context):
        return jobs.is_running(cls.job_kind)

    def execute(self, context):
        jobs.cancel(self.job_kind)
        return {"FINISHED"}


class _ReconstructMixin:
    """One reconstruction at a time, from any of the reconstruct operators."""

    @classmethod
    def poll(cls, context):
        if jobs.is_running():
            cls.poll_message_set("A reconstruction is already running")
            return False
        return context.scene is not None


class HIFACE_OT_reconstruct_photo(_ReconstructMixin, bpy.types.Operator):
    """Reconstruct an animatable 3D face from a photo file (runs in the background)"""
    bl_idname = "hiface.reconstruct_photo"
    bl_label = "Reconstruct from Photo"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="Photo", subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_image: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    add_camera: BoolProperty(name="Add Photo Camera", default=True,
                             description="Add a camera that renders the face over the photo")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            self.report({"ERROR"}, "No photo chosen")
            return {"CANCELLED"}
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"Photo not found: {path}")
            return {"CANCELLED"}
        settings = prefs.settings(context)
        request = jobs.Request(photo_path=path, source_label=path, **settings)
        name = f"HiFace {Path(path).stem}"[:60]
        return _start(self, context, request, _make_apply(context, name=name,
                                                           add_camera=self.add_camera))


class HIFACE_OT_reconstruct_image(_ReconstructMixin, bpy.types.Operator):
    """Reconstruct an animatable 3D face from an image already loaded in Blender"""
    bl_idname = "hiface.reconstruct_image"
    bl_label = "Reconstruct from Image"
    bl_options = {"REGISTER"}

    image_name: StringProperty(name="Image", options={"SKIP_SAVE"})
    add_camera: BoolProperty(name="Add Photo Camera", default=True,
                             description="Add a camera that renders the face over the photo")

    def execute(self, context):
        image = bpy.data.images.get(self.image_name)
        if image is None:
            self.report({"ERROR"}, f"No image named '{self.image_name}'" if self.image_name
                        else "Choose an image first")
            return {"CANCELLED"}
        try:
            rgb = image_to_rgb(image)
        except (ValueError, RuntimeError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        source = bpy.path.abspath(image.filepath) if image.filepath else image.name
        request = jobs.Request(rgb=rgb, source_label=source, **prefs.settings(context))
        name = f"HiFace {Path(image.name).stem}"[:60]
        return _start(self, context, request, _make_apply(
            context, name=name, add_camera=self.add_camera, photo_image=image.name))


class HIFACE_OT_watch_job(WatchJobMixin, bpy.types.Operator):
    """Show the job in the status bar, cancel it with Esc, report how it ended"""
    bl_idname = "hiface.watch_job"
    bl_label = "HiFace Job"
    bl_options = {"INTERNAL"}


class HIFACE_OT_cancel(CancelJobMixin, bpy.types.Operator):
    """Stop the running reconstruction; nothing is added to the scene"""
    bl_idname = "hiface.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}


class HIFACE_OT_set_expression(bpy.types.Operator):
    """Set every expression shape key of the active face"""
    bl_idname = "hiface.set_expression"
    bl_label = "Set Expression"
    bl_options = {"REGISTER", "UNDO"}

    target: EnumProperty(
        name="Expression",
        items=(("NEUTRAL", "Neutral", "All expression keys to 0"),
               ("PHOTO", "Photo", "The expression seen in the photo")))

    @classmethod
    def poll(cls, context):
        return is_hiface_object(context.object)

    def execute(self, context):
        obj = context.object
        keys = obj.data.shape_keys.key_blocks
        photo = list(obj.get("hiface_expression", []))
        for i, kb in enumerate(keys[1:]):
            kb.value = float(photo[i]) if self.target == "PHOTO" and i < len(photo) else 0.0
        return {"FINISHED"}


class HIFACE_OT_add_photo_camera(bpy.types.Operator):
    """Add a camera that renders the active face over its photo, and use it for the scene"""
    bl_idname = "hiface.add_photo_camera"
    bl_label = "Add Photo Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        obj = context.object
        return is_hiface_object(obj) and "hiface_intrinsics" in obj

    def execute(self, context):
        from ..blender.build import add_photo_camera
        cam = add_photo_camera(None, context.object, name=f"{context.object.name} Camera",
                               collection=context.collection, scene=context.scene)
        self.report({"INFO"}, f"Added '{cam.name}' as the scene camera")
        return {"FINISHED"}


classes = (
    HIFACE_OT_reconstruct_photo,
    HIFACE_OT_reconstruct_image,
    HIFACE_OT_watch_job,
    HIFACE_OT_cancel,
    HIFACE_OT_set_expression,
    HIFACE_OT_add_photo_camera,
)
