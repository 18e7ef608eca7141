"""Where the model files are found. One place, used by the add-on, the CLI and the tests.

Order: an explicit directory (preferences or --data-dir), $HIFACE_DATA_DIR, the extension's user
directory (inside Blender), the user cache directory (written by build.py), then the data bundled
into the built extension. Nothing is ever written into the add-on's own folder at run time.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .core.errors import HiFaceError
from .core.model_data import FORMAT_VERSION

FACE_MODEL = "face_model.npz"
LANDMARKER = "face_landmarker.task"
REQUIRED = (FACE_MODEL, LANDMARKER)
BUNDLED_DIR = Path(__file__).resolve().parent / "data"


def user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "hiface_blender" / f"data-v{FORMAT_VERSION}"


def _extension_user_dir() -> Path | None:
    bpy = sys.modules.get("bpy")
    if bpy is None or not __package__:
        return None
    try:
        return Path(bpy.utils.extension_path_user(__package__, create=False)) / "data"
    except (ValueError, AttributeError, RuntimeError):
        return None


def candidate_dirs(explicit: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if explicit:
        dirs.append(Path(explicit))
    if os.environ.get("HIFACE_DATA_DIR"):
        dirs.append(Path(os.environ["HIFACE_DATA_DIR"]))
    ext = _extension_user_dir()
    if ext is not None:
        dirs.append(ext)
    dirs += [user_cache_dir(), BUNDLED_DIR]
    return dirs


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The first candidate directory that holds all model files."""
    for d in candidate_dirs(explicit):
        if all((d / name).is_file() for name in REQUIRED):
            return d
    looked = ", ".join(str(d) for d in candidate_dirs(explicit))
    raise HiFaceError(f"HiFace model files not found (looked in {looked}); run `python3 build.py setup`")


def face_model_path(explicit=None) -> Path:
    return data_dir(explicit) / FACE_MODEL


def landmarker_path(explicit=None) -> Path:
    return data_dir(explicit) / LANDMARKER
