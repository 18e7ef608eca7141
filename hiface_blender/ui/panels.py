"""The "HiFace" tab in the 3D viewport sidebar."""
from __future__ import annotations

import re

import bpy

from ..blender.eye_rig import GAZE_PROPS
from . import jobs
from .operators import is_hiface_object

REGIONS = (("brow", "Brows"), ("eye", "Eyes"), ("cheek", "Cheeks"), ("nose", "Nose"),
           ("mouth", "Mouth"), ("jaw", "Jaw"))


def region_of(key_name: str) -> str:
    for prefix, label in REGIONS:
        if key_name.startswith(prefix):
            return label
    return "Other"


def pretty(key_name: str, prefix: str) -> str:
    """mouthSmile_L -> Smile L (the region is the group's title)."""
    core = key_name[len(prefix):] if key_name.startswith(prefix) else key_name
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", core.replace("_", " ")).split()
    return " ".join(w[:1].upper() + w[1:] for w in words) or key_name


class HiFacePanel:
    # Where every HiFace panel lives: the HiFace tab of the 3D view sidebar.
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HiFace"


class HIFACE_PT_reconstruct(HiFacePanel, bpy.types.Panel):
    bl_idname = "HIFACE_PT_reconstruct"
    bl_label = "Reconstruct"

    def draw(self, context):
        layout = self.layout
        wm = context.window_manager
        if jobs.is_running():
            layout.progress(factor=wm.hiface_progress, type="BAR",
                            text=wm.hiface_status or "Working")
            layout.operator("hiface.cancel", icon="CANCEL")
            return
        col = layout.column(align=True)
        col.scale_y = 1.3
        col.operator("hiface.reconstruct_photo", icon="FILE_IMAGE")
        layout.separator()
        col = layout.column(align=True)
        col.label(text="Image in this file:")
        row = col.row(align=True)
        row.prop_search(wm, "hiface_image", bpy.data, "images", text="")
        sub = row.row(align=True)
        sub.enabled = bool(wm.hiface_image)
        op = sub.operator("hiface.reconstruct_image", text="", icon="PLAY")
        op.image_name = wm.hiface_image

        state, message = jobs.last_outcome()
        if message and state in {"error", "cancelled", "done"}:
            icon = {"error": "ERROR", "cancelled": "INFO", "done": "CHECKMARK"}[state]
            box = layout.box()
            for i, line in enumerate(_wrap(wm.hiface_status or message, 40)):
                box.label(text=line, icon=icon if i == 0 else "BLANK1")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


class HIFACE_PT_expressions(HiFacePanel, bpy.types.Panel):
    bl_idname = "HIFACE_PT_expressions"
    bl_label = "Expressions"

    @classmethod
    def poll(cls, context):
        return is_hiface_object(context.object)

    def draw(self, context):
        layout = self.layout
        obj = context.object
        row = layout.row(align=True)
        row.operator("hiface.set_expression", text="Neutral").target = "NEUTRAL"
        row.operator("hiface.set_expression", text="Photo").target = "PHOTO"
        layout.operator("hiface.add_photo_camera", icon="CAMERA_DATA")

        groups: dict[str, list] = {}
        for kb in obj.data.shape_keys.key_blocks[1:]:
            groups.setdefault(region_of(kb.name), []).append(kb)
        prefixes = dict((label, prefix) for prefix, label in REGIONS)
        for label in [r[1] for r in REGIONS] + ["Other"]:
            keys = groups.get(label)
            if not keys:
                continue
            header, body = layout.panel(f"hiface_expr_{label.lower()}", default_closed=False)
            header.label(text=label)
            if body is None:
                continue
            col = body.column(align=True)
            prefix = prefixes.get(label, "")
            by_name = {kb.name: kb for kb in keys}
            for kb in keys:
                if kb.name.endswith("_R") and kb.name[:-2] + "_L" in by_name:
                    continue  # drawn beside its left twin
                twin = by_name.get(kb.name[:-2] + "_R") if kb.name.endswith("_L") else None
                row = col.row(align=True)
                row.prop(kb, "value", text=pretty(kb.name, prefix), slider=True)
                if twin is not None:
                    row.prop(twin, "value", text=pretty(twin.name, prefix), slider=True)
            if label == "Eyes" and all(p in obj for p in GAZE_PROPS.values()):
                col = body.column(align=True)
                col.label(text="Eye turn at 1:")
                row = col.row(align=True)
                for which, prop in GAZE_PROPS.items():
                    row.prop(obj, f'["{prop}"]', text=which.title())


classes = (
    HIFACE_PT_reconstruct,
    HIFACE_PT_expressions,
)
