"""HiFace for Blender: one photo to an animatable 3D face.

Enabling the add-on imports bpy-side modules only; torch, MediaPipe and OpenCV are imported
by the background job on first use. Relative imports throughout, so the package works both as
`hiface_blender` and as an installed extension (`bl_ext.<repo>.hiface_blender`).
"""


def register() -> None:
    from . import ui
    ui.register()


def unregister() -> None:
    from . import ui
    ui.unregister()
