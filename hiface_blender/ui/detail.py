"""The "Detail" panel of the HiFace sidebar: Static / Dynamic Detail sliders of the active face,
how the detail is shown, subdivision and tension ramp, export of the maps."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from ..blender import detail_rig as dr
from .operators import is_hiface_object
from .panels import HiFacePanel


def _rigged(obj) -> bool:
    return is_hiface_object(obj) and dr.is_rigged(obj)


class HIFACE_OT_detail_mode(bpy.types.Operator):
    bl_idname = "hiface.detail_mode"
    bl_label = "Detail Shown As"
    bl_description = "How the fine detail is shown: displaced geometry, bump, or true displacement"
    bl_options = {"REGISTER", "UNDO"}

    mode: EnumProperty(items=dr.MODES, name="Mode")

    @classmethod
    def poll(cls, context):
        return _rigged(context.object)

    def execute(self, context):
        dr.set_detail_mode(context.object, self.mode)
        return {"FINISHED"}


def _transfer_source(context):
    """The other selected HiFace face (the active object is the target)."""
    target = context.object
    others = [o for o in context.selected_objects if o != target and is_hiface_object(o)]
    return others[0] if len(others) == 1 else None


class HIFACE_OT_transfer_detail(bpy.types.Operator):
    bl_idname = "hiface.transfer_detail"
    bl_label = "Transfer Expression and Wrinkles"
    bl_description = ("Drive the active face by the other selected face: its expression keys, "
                      "their animation and its expression wrinkles (dynamic detail maps)")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return _rigged(context.object)

    def execute(self, context):
        from ..blender.transfer import transfer_detail

        target = context.object
        others = [o for o in context.selected_objects if o != target and is_hiface_object(o)]
        if len(others) != 1:
            self.report({"ERROR"}, "Select exactly one other HiFace face as the source, "
                                   "with the target active")
            return {"CANCELLED"}
        try:
            transfer_detail(others[0], target)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"{target.name} now follows {others[0].name}")
        return {"FINISHED"}


class HIFACE_OT_export_detail_maps(bpy.types.Operator):
    bl_idname = "hiface.export_detail_maps"
    bl_label = "Export Detail Maps"
    bl_description = ("Write the active face's static, compressed and stretched detail maps "
                      "(metres along the normal, ICT UV layout) as 16-bit PNG or float EXR")
    bl_options = {"REGISTER"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH")
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    file_format: EnumProperty(
        name="Format",
        items=(("png", "16-bit PNG", "Displace with midlevel 0.5 and strength 2 x scale_m; "
                                     "scale_m is stored in the file"),
               ("exr", "OpenEXR", "Float metres, with a .json beside each map")),
        default="png")
    overwrite: BoolProperty(name="Overwrite", default=False,
                            description="Replace maps of this face already in the folder")

    @classmethod
    def poll(cls, context):
        return _rigged(context.object)

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        folder = bpy.path.abspath(self.directory) if self.directory else ""
        if not folder:
            self.report({"ERROR"}, "No folder chosen")
            return {"CANCELLED"}
        try:
            paths = dr.export_detail_maps(context.object, folder, self.file_format,
                                          overwrite=self.overwrite)
        except (ValueError, OSError) as e:
            self.report({"ERROR"}, " ".join(str(e).split()))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Wrote {len(paths)} detail maps to {folder}")
        return {"FINISHED"}


class HIFACE_PT_detail(HiFacePanel, bpy.types.Panel):
    bl_idname = "HIFACE_PT_detail"
    bl_label = "Detail"

    @classmethod
    def poll(cls, context):
        return _rigged(context.object)

    def draw(self, context):
        layout = self.layout
        obj = context.object
        col = layout.column(align=True)
        # Custom properties: keyframeable with I over the slider, like any property.
        col.prop(obj, f'["{dr.STATIC_PROP}"]', text="Static Detail", slider=True)
        col.prop(obj, f'["{dr.DYNAMIC_PROP}"]', text="Dynamic Detail", slider=True)

        current = obj.get(dr.MODE_PROP, "MODIFIERS")
        row = layout.row(align=True)
        for ident, label, _ in dr.MODES:
            row.operator("hiface.detail_mode", text=label, depress=ident == current).mode = ident

        sub = obj.modifiers.get(dr.MOD_SUBSURF)
        if sub is not None:
            row = layout.row(align=True)
            row.prop(sub, "levels", text="Viewport")
            row.prop(sub, "render_levels", text="Render")
        tension = obj.modifiers.get(dr.MOD_TENSION)
        if tension is not None and tension.node_group is not None:
            header, body = layout.panel("hiface_detail_tension", default_closed=True)
            header.label(text="Tension")
            if body is not None:
                col = body.column(align=True)
                for name in ("Full Compression", "Full Stretch"):
                    ident = dr.socket_id(tension.node_group, name)
                    col.prop(tension, f'["{ident}"]', text=name)

        layout.operator("hiface.export_detail_maps", icon="EXPORT")

        source = _transfer_source(context)
        row = layout.row()
        row.enabled = source is not None
        row.operator("hiface.transfer_detail", icon="MOD_DATA_TRANSFER",
                     text=f"Transfer from {source.name}" if source else
                     "Transfer Expression and Wrinkles")


classes = (
    HIFACE_OT_detail_mode,
    HIFACE_OT_transfer_detail,
    HIFACE_OT_export_detail_maps,
    HIFACE_PT_detail,
)
