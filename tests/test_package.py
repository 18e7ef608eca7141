"""The built extension, installed and used as a user would, in a Blender that has nothing else.

`build.py package` builds dist/hiface_blender-*-linux_x64.zip. A fresh interpreter then sees only
what Blender itself ships (bpy and numpy: `-I -S` and a folder that links just those two), with
its own empty user resources, so the add-on must run on the wheels and data inside its zip. It
installs the zip into the user repository, enables the add-on, reconstructs the sample photo
through the operator, and disables it again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the package is built for linux-x64")

# Runs inside the isolated interpreter; prints one JSON line with what it saw.
_INSIDE = r'''
import json, sys, time
zip_path, photo, blender_site = sys.argv[1:4]
sys.path.insert(0, blender_site)
import bpy, addon_utils

out = {}
t = time.perf_counter()
out["install"] = sorted(bpy.ops.extensions.package_install_files(
    filepath=zip_path, repo="user_default", enable_on_install=True))
out["install_s"] = time.perf_counter() - t
pkg = "bl_ext.user_default.hiface_blender"
out["enabled"] = pkg in bpy.context.preferences.addons
out["heavy_at_enable"] = sorted(m for m in ("torch", "mediapipe", "cv2") if m in sys.modules)

jobs = sys.modules[pkg + ".ui.jobs"]
before = {o.name for o in bpy.data.objects}
out["operator"] = sorted(bpy.ops.hiface.reconstruct_photo(filepath=photo))
deadline = time.monotonic() + 600
while jobs.pump() and time.monotonic() < deadline:
    time.sleep(0.05)
out["job"] = list(jobs.last_outcome())
import torch, mediapipe, cv2
out["module_files"] = {m.__name__: m.__file__ for m in (torch, mediapipe, cv2)}
from importlib import import_module
paths = import_module(pkg + ".paths")
out["data_dir"] = str(paths.data_dir())
new = [o for o in bpy.data.objects if o.name not in before]
faces = [o for o in new if o.type == "MESH" and o.data.shape_keys is not None]
out["new_objects"] = sorted(o.type for o in new)
if faces:
    obj = faces[0]
    out["face"] = {"vertices": len(obj.data.vertices),
                   "shape_keys": len(obj.data.shape_keys.key_blocks),
                   "materials": len(obj.data.materials)}

addon_utils.disable(pkg, default_set=True, handle_error=None)
out["enabled_after_disable"] = pkg in bpy.context.preferences.addons
bases = (bpy.types.Operator, bpy.types.Panel, bpy.types.Menu, bpy.types.UIList,
         bpy.types.PropertyGroup, bpy.types.AddonPreferences)
out["still_registered"] = sorted(
    c.__name__ for b in bases for c in b.__subclasses__()
    if c.__module__.startswith(pkg) and getattr(c, "is_registered", False))
out["wm_props_left"] = sorted(p for p in dir(bpy.types.WindowManager) if p.startswith("hiface"))
out["timer_left"] = bpy.app.timers.is_registered(jobs._tick)
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def package_zip() -> Path:
    started = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "package"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:]
    zips = sorted((ROOT / "dist").glob("hiface_blender-*-linux_x64.zip"))
    assert len(zips) == 1, zips
    assert zips[0].stat().st_mtime >= started - 1, "the zip was not rebuilt"
    return zips[0]


def test_package_contents(package_zip):
    with zipfile.ZipFile(package_zip) as z:
        names = set(z.namelist())
        manifest = z.read("blender_manifest.toml").decode()
    for need in ("__init__.py", "cli.py", "paths.py", "core/reconstruct.py", "ui/jobs.py",
                 "blender/build.py", "data/face_model.npz", "data/face_landmarker.task",
                 "data/NOTICE.txt", "data/LICENSE-ICT-FaceKit.txt", "data/LICENSE-MediaPipe.txt"):
        assert need in names, need
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert any(w.startswith("wheels/torch-2.13.0") for w in wheels)
    assert any(w.startswith("wheels/mediapipe-") for w in wheels)
    assert not any(w.startswith("wheels/numpy-") for w in wheels)  # Blender's own
    assert not any("__pycache__" in n for n in names)
    for w in wheels:
        assert f'"./{w}"' in manifest, w
    assert 'platforms = ["linux-x64"]' in manifest


def test_install_enable_reconstruct_disable(package_zip, astronaut_png, tmp_path):
    # Only what Blender itself provides: bpy and numpy.
    site = Path(sysconfig.get_paths()["purelib"])
    blender_site = tmp_path / "blender-site"
    blender_site.mkdir()
    for name in ("bpy", "numpy", "numpy.libs"):
        if (site / name).exists():
            (blender_site / name).symlink_to(site / name)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        # A fresh user profile: config, scripts and the extension repositories live here.
        "BLENDER_USER_RESOURCES": str(home / "blender"),
        # No converted data from a developer's set-up: the bundled data must be used.
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _INSIDE, str(package_zip), str(astronaut_png),
         str(blender_site)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=1500)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-6000:]
    out = json.loads(lines[-1][len("RESULT "):])

    assert out["install"] == ["FINISHED"]
    assert out["enabled"]
    assert out["heavy_at_enable"] == []  # the engine loads on first use, not at enable
    assert out["operator"] == ["FINISHED"]
    assert out["job"][0] == "done", out["job"]
    ext_root = home / "blender"
    for name, path in out["module_files"].items():
        assert Path(path).is_relative_to(ext_root), (name, path)  # from the bundled wheels
    assert Path(out["data_dir"]).is_relative_to(ext_root), out["data_dir"]
    assert "MESH" in out["new_objects"] and "CAMERA" in out["new_objects"]
    assert out["face"]["vertices"] == 26719
    assert out["face"]["shape_keys"] == 54  # Basis + 53 expressions
    assert out["face"]["materials"] >= 1

    assert not out["enabled_after_disable"]
    assert out["still_registered"] == []
    assert out["wm_props_left"] == []
    assert not out["timer_left"]
