"""Operators, panels, preferences and the background job runner (bpy only; the engine is
imported lazily inside the worker thread)."""
from __future__ import annotations

import bpy
from bpy.app.handlers import persistent

from . import detail, jobs, operators, panels, prefs, retarget

classes = (
    prefs.HIFACE_AddonPreferences,
    *operators.classes,
    *panels.classes,
    *retarget.classes,
    *detail.classes,
)


@persistent
def _on_load_pre(*_args):
    # The scene the job would add to is about to be freed.
    jobs.stop()


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    prefs.register_properties()
    retarget.register_properties()
    bpy.app.handlers.load_pre.append(_on_load_pre)


def unregister() -> None:
    jobs.stop()
    jobs.release_models()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    retarget.unregister_properties()
    prefs.unregister_properties()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
