"""Add-on preferences and the window-manager properties that show a job's progress."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

# The add-on's package: "hiface_blender" from the repository, "bl_ext.<repo>.hiface_blender"
# when installed as an extension. Preferences are registered under this name.
ADDON_ID = __package__.rpartition(".")[0]


class HIFACE_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    device: EnumProperty(
        name="Device",
        items=(("auto", "Automatic", "CUDA if available, then Apple Metal, then CPU"),
               ("cpu", "CPU", "Always run on the CPU"),
               ("cuda", "CUDA", "NVIDIA GPU (fails with a message if none is usable)")),
        default="auto")
    quality: EnumProperty(
        name="Quality",
        items=(("fast", "Fast", "Fewer fitting iterations, 512 px texture"),
               ("standard", "Standard", "Balanced, 1024 px texture"),
               ("high", "High", "More fitting iterations, 2048 px texture")),
        default="standard")
    detail_size: EnumProperty(
        name="Detail Maps",
        description="Side of the static and dynamic detail maps, in texels",
        items=(("512", "512", "Coarse relief, fastest"),
               ("1024", "1024", "Pores and fine wrinkles (under 2 s on a CPU)"),
               ("2048", "2048", "For close-ups of a large photo (about 10 s and 2 GB on a CPU)"),
               ("4096", "4096", "Largest (about a minute and 4-5 GB of memory on a CPU)")),
        default="1024")
    fill_neck_clothing: BoolProperty(
        name="Fill Clothing on Neck",
        description="Fill what is not skin on the neck (a collar, a scarf) with skin in the "
                    "texture; turn off to keep the neck as the photo shows it (a beard)",
        default=True)
    landmark_backend: EnumProperty(
        name="Landmarks",
        items=(("mediapipe", "MediaPipe", "Bundled MediaPipe Face Landmarker (offline)"),
               ("face-alignment", "face-alignment",
                "Optional package; downloads its weights on first use")),
        default="mediapipe")
    data_dir: StringProperty(
        name="Model Data Folder", subtype="DIR_PATH",
        description="Folder holding face_model.npz and face_landmarker.task "
                    "(empty: the extension's own data)")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "device")
        layout.prop(self, "quality")
        layout.prop(self, "detail_size")
        layout.prop(self, "fill_neck_clothing")
        layout.prop(self, "landmark_backend")
        layout.prop(self, "data_dir")


def settings(context) -> dict:
    """Preference values as plain strings (defaults when the add-on was registered directly
    rather than enabled, as in scripts and tests)."""
    addon = context.preferences.addons.get(ADDON_ID)
    p = addon.preferences if addon is not None else None
    if p is None:
        return {"device": "auto", "quality": "standard", "landmark_backend": "mediapipe",
                "data_dir": "", "detail_size": 1024, "fill_neck_clothing": True}
    return {"device": p.device, "quality": p.quality, "landmark_backend": p.landmark_backend,
            "data_dir": bpy.path.abspath(p.data_dir) if p.data_dir else "",
            "detail_size": int(p.detail_size), "fill_neck_clothing": bool(p.fill_neck_clothing)}


WM_PROPS = {
    "hiface_progress": FloatProperty(name="Progress", min=0.0, max=1.0, subtype="FACTOR",
                                     options={"SKIP_SAVE"}),
    "hiface_status": StringProperty(name="Status", options={"SKIP_SAVE"}),
    "hiface_image": StringProperty(name="Image",
                                   description="Image already loaded in Blender to reconstruct from",
                                   options={"SKIP_SAVE"}),
}


def add_wm_props(props: dict) -> None:
    for name, prop in props.items():
        setattr(bpy.types.WindowManager, name, prop)


def remove_wm_props(props: dict) -> None:
    """The mirror of add_wm_props; tolerant of a partial register."""
    for name in reversed(list(props)):
        if hasattr(bpy.types.WindowManager, name):
            delattr(bpy.types.WindowManager, name)


def register_properties() -> None:
    add_wm_props(WM_PROPS)


def unregister_properties() -> None:
    remove_wm_props(WM_PROPS)
