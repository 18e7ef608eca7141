"""Retarget a performance onto a face: from a video (background job) or a Live Link Face CSV.

The target is a HiFace face or any mesh whose shape keys use ARKit names in either spelling.
For a HiFace face the tracker gets a FaceResult rebuilt from the object's own properties
(identity, photo intrinsics and size): the object is the record of the reconstruction, so no
.npz has to travel with the .blend. Other meshes are tracked with the mean ICT identity.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import jobs, prefs
from .operators import CancelJobMixin, WatchJobMixin, is_hiface_object, start_job
from .panels import HiFacePanel

KIND = "retarget"
UNDO_VIDEO = "Retarget from Video"

jobs.register_kind(jobs.Kind(KIND, progress_prop="hiface_retarget_progress",
                             status_prop="hiface_retarget_status",
                             failure="Could not write the animation"))


def has_arkit_keys(obj) -> bool:
    from ..core.arkit_csv import is_arkit_name
    if obj is None or obj.type != "MESH" or obj.data.shape_keys is None:
        return False
    return any(is_arkit_name(kb.name) for kb in obj.data.shape_keys.key_blocks[1:])


def _target_poll(_settings, obj) -> bool:
    return has_arkit_keys(obj)


class HIFACE_PG_retarget(bpy.types.PropertyGroup):
    """Retarget settings, saved with the scene."""
    target: PointerProperty(name="Target", type=bpy.types.Object, poll=_target_poll,
                            description="A HiFace face or any mesh with ARKit shape keys "
                                        "(empty: the active object)")
    video: StringProperty(name="Video", subtype="FILE_PATH",
                          description="Performance to retarget (mp4, mov, avi, mpg...)")
    start_frame: IntProperty(name="Start Frame", default=1,
                             description="Scene frame of the first key")
    match_fps: BoolProperty(name="Match Scene Frame Rate", default=True,
                            description="Resample the source onto the scene's frame rate so it "
                                        "plays at its real speed; off: one key per source frame")
    smoothing: FloatProperty(name="Smoothing", default=0.5, min=0.0, max=1.0, subtype="FACTOR",
                             description="Temporal smoothing of the tracked curves "
                                         "(0: raw, 1: strongest; fast motion keeps its snap)")
    head_motion: BoolProperty(name="Head Motion", default=True,
                              description="Key the object's rotation, relative to the first "
                                          "tracked pose")
    same_person: BoolProperty(name="Same Person as the Photo", default=False,
                              description="The performer is the person the face was "
                                          "reconstructed from: hold their shape instead of "
                                          "estimating the performer's")
    clip_start: IntProperty(name="First Frame", default=0, min=0,
                            description="First video frame to track (0: the first)")
    clip_end: IntProperty(name="Last Frame", default=0, min=0,
                          description="Last video frame to track (0: to the end)")


# ---------------------------------------------------------------------------------------------
# Video: the job

@dataclass(frozen=True)
class RetargetRequest:
    """Plain inputs of the tracking worker (read on the main thread)."""
    video_path: str
    smoothing: float
    clip_start: int = 0
    clip_end: int | None = None      # exclusive
    identity: np.ndarray | None = None
    intrinsics: np.ndarray | None = None
    image_size: np.ndarray | None = None
    same_person: bool = False
    device: str = "auto"
    quality: str = "standard"
    landmark_backend: str = "mediapipe"
    data_dir: str = ""
    detail_size: int = 1024           # shares the cached reconstructor's settings
    fill_neck_clothing: bool = True


@dataclass
class RetargetPayload:
    track: object                    # core.result.Track
    notes: list[str] = field(default_factory=list)


def face_for_tracking(req: RetargetRequest, model):
    """The target identity as a FaceResult for the tracker, or None for a non-HiFace mesh."""
    from ..core.result import FaceResult

    if req.identity is None or req.identity.shape != (model.id_basis.shape[0],):
        return None
    identity = req.identity.astype(np.float32)
    n_exp = len(model.exp_names)
    none2 = np.zeros((0, 2), np.float32)
    return FaceResult(
        identity=identity, expression=np.zeros(n_exp, np.float32),
        exp_names=np.asarray(model.exp_names),
        neutral_vertices=(model.neutral + np.tensordot(identity, model.id_basis, 1)).astype(np.float32),
        rotation=np.eye(3, dtype=np.float32), translation=np.zeros(3, np.float32),
        intrinsics=np.asarray(req.intrinsics, np.float32).reshape(3, 3),
        image_size=np.asarray(req.image_size, np.int32).ravel()[:2],
        texture=np.zeros((0, 0, 3), np.uint8), texture_mask=np.zeros((0, 0), np.uint8),
        landmarks_detected=none2, landmarks_fitted=none2,
        arkit_scores=np.zeros(0, np.float32), arkit_names=np.zeros(0, str))


def track_worker(req: RetargetRequest, post, cancel: threading.Event) -> RetargetPayload:
    """Worker thread (no bpy): load or share the models, track the video."""
    from ..core.errors import Cancelled
    from ..core.tracking import Tracker, TrackSettings

    post(("progress", 0.0, "Loading the face models"))
    rec = jobs.reconstructor(req, post)
    if cancel.is_set():
        raise Cancelled()
    face = face_for_tracking(req, rec.model)
    settings = TrackSettings(device=req.device, smoothing=float(req.smoothing),
                             start=int(req.clip_start), end=req.clip_end,
                             identity="target" if req.same_person and face is not None else "video",
                             data_dir=req.data_dir or None)
    tracker = Tracker(rec, settings)
    try:
        track = tracker.track(req.video_path, face,
                              progress=lambda f, m: post(("progress", float(f), str(m))),
                              cancel=cancel)
    finally:
        tracker.close()
    return RetargetPayload(track=track, notes=list(track.report.get("notes", [])))


def _make_apply(context, *, target: str, start_frame: int, match_fps: bool, head_motion: bool,
                video: str):
    scene_name = context.scene.name

    def apply(payload: RetargetPayload) -> str | None:
        from ..blender.animate import apply_track, scene_fps
        from ..core.errors import HiFaceError

        obj = bpy.data.objects.get(target)
        if obj is None:
            raise HiFaceError(f"the target '{target}' no longer exists")
        scene = bpy.data.scenes.get(scene_name) or bpy.context.scene
        track = payload.track
        notes = list(payload.notes)
        action = apply_track(obj, track, start_frame=start_frame,
                             scene_fps=scene_fps(scene) if match_fps else track.fps,
                             head_motion=head_motion, notes=notes)
        action["hiface_source"] = video
        bpy.ops.ed.undo_push(message=UNDO_VIDEO)
        return "; ".join(notes) or None

    return apply


def _resolve_target(context, name: str):
    if name:
        return bpy.data.objects.get(name)
    return context.object


class HIFACE_OT_retarget_video(bpy.types.Operator):
    """Track a performance video and key it onto the target's ARKit shape keys and rotation
    (runs in the background; Esc cancels)"""
    bl_idname = "hiface.retarget_video"
    bl_label = "Retarget from Video"
    bl_options = {"REGISTER"}

    filepath: StringProperty(name="Video", subtype="FILE_PATH", options={"SKIP_SAVE"})
    target: StringProperty(name="Target", description="Object name (empty: the active object)",
                           options={"SKIP_SAVE"})
    start_frame: IntProperty(name="Start Frame", default=1)
    match_fps: BoolProperty(name="Match Scene Frame Rate", default=True)
    smoothing: FloatProperty(name="Smoothing", default=0.5, min=0.0, max=1.0, subtype="FACTOR")
    head_motion: BoolProperty(name="Head Motion", default=True)
    same_person: BoolProperty(name="Same Person as the Photo", default=False)
    clip_start: IntProperty(name="First Frame", default=0, min=0)
    clip_end: IntProperty(name="Last Frame", default=0, min=0,
                          description="Last video frame to track, included (0: to the end)")

    @classmethod
    def poll(cls, context):
        if jobs.is_running(KIND):
            cls.poll_message_set("A retarget is already running")
            return False
        return context.scene is not None

    def execute(self, context):
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path:
            self.report({"ERROR"}, "No video chosen")
            return {"CANCELLED"}
        if not os.path.isfile(path):
            self.report({"ERROR"}, f"Video not found: {path}")
            return {"CANCELLED"}
        obj = _resolve_target(context, self.target)
        if obj is None:
            self.report({"ERROR"}, f"No object named '{self.target}'" if self.target
                        else "Choose a target object")
            return {"CANCELLED"}
        if not has_arkit_keys(obj):
            self.report({"ERROR"}, f"'{obj.name}' has no ARKit shape keys (named like jawOpen, "
                                   "mouthSmileLeft or mouthSmile_L)")
            return {"CANCELLED"}
        if self.clip_end and self.clip_end < self.clip_start:
            self.report({"ERROR"}, "The last video frame is before the first")
            return {"CANCELLED"}
        hiface = is_hiface_object(obj) and "hiface_identity" in obj
        request = RetargetRequest(
            video_path=path, smoothing=self.smoothing, clip_start=self.clip_start,
            clip_end=self.clip_end + 1 if self.clip_end else None,
            identity=np.asarray(obj["hiface_identity"], np.float32) if hiface else None,
            intrinsics=np.asarray(obj["hiface_intrinsics"], np.float32) if hiface else None,
            image_size=np.asarray(obj["hiface_image_size"], np.int32) if hiface else None,
            same_person=self.same_person and hiface, **prefs.settings(context))
        apply = _make_apply(context, target=obj.name, start_frame=self.start_frame,
                            match_fps=self.match_fps, head_motion=self.head_motion, video=path)
        return start_job(self, context, request, apply, watcher="watch_retarget", kind=KIND,
                         work=track_worker)


class HIFACE_OT_watch_retarget(WatchJobMixin, bpy.types.Operator):
    """Show the retarget in the status bar, cancel it with Esc, report how it ended"""
    bl_idname = "hiface.watch_retarget"
    bl_label = "HiFace Retarget"
    bl_options = {"INTERNAL"}

    job_kind = KIND
    job_label = "HiFace retarget"
    cancelled_message = "HiFace retarget cancelled, nothing was changed"


class HIFACE_OT_cancel_retarget(CancelJobMixin, bpy.types.Operator):
    """Stop the running retarget; nothing is keyed"""
    bl_idname = "hiface.cancel_retarget"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    job_kind = KIND


# ---------------------------------------------------------------------------------------------
# Live Link Face CSV

class HIFACE_OT_import_arkit_csv(bpy.types.Operator):
    """Key a Live Link Face (ARKit) CSV take onto the target's ARKit shape keys"""
    bl_idname = "hiface.import_arkit_csv"
    bl_label = "Import ARKit CSV"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="CSV File", subtype="FILE_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.csv", options={"HIDDEN", "SKIP_SAVE"})
    target: StringProperty(name="Target", description="Object name (empty: the active object)",
                           options={"SKIP_SAVE"})
    start_frame: IntProperty(name="Start Frame", default=1,
                             description="Scene frame of the take's first row")
    timecode_rate: EnumProperty(
        name="Timecode Rate",
        items=(("AUTO", "Automatic", "From the timecodes' frame field (Live Link Face: 60)"),
               ("24", "24", ""), ("25", "25", ""), ("30", "30", ""), ("50", "50", ""),
               ("60", "60", "")),
        default="AUTO",
        description="Frame rate of the timecode's frame field")

    @classmethod
    def poll(cls, context):
        return context.scene is not None

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        from ..blender.animate import Curves, apply_curves
        from ..core.arkit_csv import read_live_link_csv
        from ..core.errors import HiFaceError

        obj = _resolve_target(context, self.target)
        if obj is None:
            self.report({"ERROR"}, f"No object named '{self.target}'" if self.target
                        else "Choose a target object")
            return {"CANCELLED"}
        path = bpy.path.abspath(self.filepath) if self.filepath else ""
        if not path or not os.path.isfile(path):
            self.report({"ERROR"}, f"CSV file not found: {path}" if path else "No CSV file chosen")
            return {"CANCELLED"}
        rate = None if self.timecode_rate == "AUTO" else float(self.timecode_rate)
        notes: list[str] = []
        try:
            take = read_live_link_csv(path, timecode_rate=rate)
            curves = Curves(times=take.times, names=take.names, values=take.values)
            action = apply_curves(obj, curves, start_frame=self.start_frame,
                                  head_motion=False, action_name=f"{obj.name} {Path(path).stem}",
                                  notes=notes)
        except HiFaceError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        action["hiface_source"] = path
        if take.unknown:
            listed = ", ".join(take.unknown[:8]) + (" ..." if len(take.unknown) > 8 else "")
            self.report({"WARNING"}, f"Ignored {len(take.unknown)} unknown column(s): {listed}")
        self.report({"INFO"}, f"{Path(path).name}: {len(take.times)} rows at "
                              f"{take.timecode_rate:g} fps timecode; " + "; ".join(notes))
        return {"FINISHED"}


# ---------------------------------------------------------------------------------------------
# Panel

class HIFACE_PT_retarget(HiFacePanel, bpy.types.Panel):
    bl_idname = "HIFACE_PT_retarget"
    bl_label = "Retarget"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        wm = context.window_manager
        s = context.scene.hiface_retarget
        target = s.target or (context.object if has_arkit_keys(context.object) else None)

        col = layout.column()
        col.use_property_split = True
        col.use_property_decorate = False
        col.prop(s, "target", text="Target")
        if s.target is None:
            col.label(text=f"Active: {target.name}" if target else "No ARKit mesh selected",
                      icon="OBJECT_DATA" if target else "INFO")
        col.prop(s, "video")
        col.prop(s, "start_frame")
        col.prop(s, "match_fps")
        col.prop(s, "smoothing", slider=True)
        col.prop(s, "head_motion")
        sub = col.row()
        sub.active = target is not None and is_hiface_object(target)
        sub.prop(s, "same_person")
        header, body = layout.panel("hiface_retarget_clip", default_closed=True)
        header.label(text="Clip Range")
        if body is not None:
            bcol = body.column(align=True)
            bcol.use_property_split = True
            bcol.prop(s, "clip_start")
            bcol.prop(s, "clip_end")

        if jobs.is_running(KIND):
            layout.progress(factor=wm.hiface_retarget_progress, type="BAR",
                            text=wm.hiface_retarget_status or "Working")
            layout.operator("hiface.cancel_retarget", icon="CANCEL")
        else:
            row = layout.row()
            row.scale_y = 1.3
            row.enabled = target is not None and bool(s.video)
            op = row.operator("hiface.retarget_video", icon="SEQUENCE")
            op.filepath = s.video
            op.target = target.name if target else ""
            op.start_frame = s.start_frame
            op.match_fps = s.match_fps
            op.smoothing = s.smoothing
            op.head_motion = s.head_motion
            op.same_person = s.same_person
            op.clip_start = s.clip_start
            op.clip_end = s.clip_end
            state, message = jobs.last_outcome(KIND)
            if message and state in {"error", "cancelled", "done"}:
                icon = {"error": "ERROR", "cancelled": "INFO", "done": "CHECKMARK"}[state]
                box = layout.box()
                box.label(text=wm.hiface_retarget_status or message, icon=icon)

        layout.separator()
        row = layout.row()
        row.enabled = target is not None
        op = row.operator("hiface.import_arkit_csv", icon="IMPORT")
        op.target = target.name if target else ""
        op.start_frame = s.start_frame


classes = (
    HIFACE_PG_retarget,
    HIFACE_OT_retarget_video,
    HIFACE_OT_watch_retarget,
    HIFACE_OT_cancel_retarget,
    HIFACE_OT_import_arkit_csv,
    HIFACE_PT_retarget,
)

WM_PROPS = {
    "hiface_retarget_progress": FloatProperty(name="Retarget Progress", min=0.0, max=1.0,
                                              subtype="FACTOR", options={"SKIP_SAVE"}),
    "hiface_retarget_status": StringProperty(name="Retarget Status", options={"SKIP_SAVE"}),
}


def register_properties() -> None:
    bpy.types.Scene.hiface_retarget = PointerProperty(type=HIFACE_PG_retarget)
    prefs.add_wm_props(WM_PROPS)


def unregister_properties() -> None:
    prefs.remove_wm_props(WM_PROPS)
    if hasattr(bpy.types.Scene, "hiface_retarget"):
        del bpy.types.Scene.hiface_retarget
