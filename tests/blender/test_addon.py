"""Enabling and disabling the add-on: exact mirrors, nothing heavy imported, nothing left over."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import addon_utils
import bpy

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _footprint():
    """Everything the add-on could leave behind in Blender."""
    return {
        "types": sorted(n for n in dir(bpy.types) if n.upper().startswith("HIFACE")),
        "wm": sorted(n for n in dir(bpy.types.WindowManager) if n.startswith("hiface")),
        "load_pre": len(bpy.app.handlers.load_pre),
        "load_post": len(bpy.app.handlers.load_post),
        "addons": sorted(a.module for a in bpy.context.preferences.addons),
    }


def test_enable_disable_twice_leaves_nothing():
    before = _footprint()
    assert not before["types"] and not before["wm"]
    for _ in range(2):
        mod = addon_utils.enable("hiface_blender", default_set=True, handle_error=_raise)
        assert mod is not None
        on = _footprint()
        assert {"HIFACE_PT_reconstruct", "HIFACE_PT_expressions",
                "HIFACE_OT_reconstruct_photo"} <= set(on["types"])
        assert {"hiface_progress", "hiface_status", "hiface_image"} <= set(on["wm"])
        assert "hiface_blender" in on["addons"]
        prefs = bpy.context.preferences.addons["hiface_blender"].preferences
        assert (prefs.device, prefs.quality, prefs.landmark_backend) == \
            ("auto", "standard", "mediapipe")
        assert on["load_pre"] == before["load_pre"] + 1
        addon_utils.disable("hiface_blender", default_set=True, handle_error=_raise)
        assert _footprint() == before
    from hiface_blender.ui import jobs
    assert not bpy.app.timers.is_registered(jobs._tick)


def _raise(exc):
    raise exc


def test_enabling_is_light_and_imports_no_engine():
    """In a fresh interpreter: enabling must not import torch, MediaPipe or OpenCV."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r})
import bpy, addon_utils
t = time.perf_counter()
addon_utils.enable("hiface_blender", default_set=True, handle_error=lambda e: (_ for _ in ()).throw(e))
dt = time.perf_counter() - t
heavy = sorted(m for m in ("torch", "mediapipe", "cv2", "PIL", "scipy") if m in sys.modules)
addon_utils.disable("hiface_blender", default_set=True)
print(json.dumps({{"seconds": dt, "heavy": heavy}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nenabling the add-on: {info['seconds'] * 1000:.0f} ms")
    assert info["heavy"] == []


def test_image_to_rgb_matches_file(astronaut_png):
    from PIL import Image
    from hiface_blender.ui.operators import image_to_rgb

    img = bpy.data.images.load(str(astronaut_png))
    rgb = image_to_rgb(img)
    expected = np.asarray(Image.open(astronaut_png).convert("RGB"))
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
    np.testing.assert_array_equal(rgb, expected)


def test_image_to_rgb_float_image_is_converted_to_srgb():
    from hiface_blender.ui.operators import image_to_rgb

    img = bpy.data.images.new("lin", 4, 2, alpha=True, float_buffer=True)
    px = np.zeros((2, 4, 4), np.float32)
    px[..., 3] = 1.0
    px[1, 0, :3] = 0.2140         # linear 0.214 is sRGB ~128; row 1 is the top row
    px[0, 3, :3] = 1.0
    img.pixels.foreach_set(px.ravel())
    rgb = image_to_rgb(img)
    assert rgb.shape == (2, 4, 3)
    assert np.all(np.abs(rgb[0, 0].astype(int) - 128) <= 1)
    assert np.all(rgb[1, 3] == 255) and np.all(rgb[1, 0] == 0)
