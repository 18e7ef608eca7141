"""Upstream assets: where they come from, how to verify them, how to fetch them.

Used by build.py at build time. A local mirror laid out like the upstream
(`HIFACE_ASSET_MIRROR`) replaces the download where set.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import HiFaceError

ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"


@dataclass(frozen=True)
class Asset:
    name: str
    mirror_path: str  # relative to the mirror directory
    url: str
    sha256: str | None  # None: verified by its contents instead (see check_ict_zip)
    license: str


ICT_FACEKIT = Asset(
    name="ICT-FaceKit",
    mirror_path=f"ICT-FaceKit-{ICT_COMMIT}.zip",
    url=f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.zip",
    sha256=None,  # archive bytes vary between downloads; the files inside are checked
    license="MIT",
)
FACE_LANDMARKER = Asset(
    name="MediaPipe Face Landmarker",
    mirror_path="mediapipe/face_landmarker.task",
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    license="Apache-2.0",
)
ASSETS = (ICT_FACEKIT, FACE_LANDMARKER)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(asset: Asset, dest_dir: Path, mirror: str | None = None) -> Path:
    """Return a verified local copy of `asset` in dest_dir, copying from the mirror or downloading."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(asset.mirror_path).name
    if dest.exists() and _verified(asset, dest):
        return dest
    mirror = mirror if mirror is not None else os.environ.get("HIFACE_ASSET_MIRROR")
    with tempfile.NamedTemporaryFile(dir=dest_dir, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
    try:
        if mirror:
            src = Path(mirror) / asset.mirror_path
            if not src.is_file():
                raise HiFaceError(f"{asset.name}: not found in the asset mirror at {src}")
            shutil.copyfile(src, tmp_path)
        else:
            try:
                with urllib.request.urlopen(asset.url, timeout=60) as r, open(tmp_path, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as e:
                raise HiFaceError(
                    f"{asset.name}: download from {asset.url} failed ({e}); "
                    "set HIFACE_ASSET_MIRROR to a local copy") from e
        if not _verified(asset, tmp_path):
            raise HiFaceError(f"{asset.name}: checksum mismatch for {tmp_path.name}")
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dest


def _verified(asset: Asset, path: Path) -> bool:
    if asset.sha256 is not None:
        return sha256_of(path) == asset.sha256
    return check_ict_zip(path)


def check_ict_zip(path: Path) -> bool:
    """The ICT archive is checked by the files the converter needs."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    prefix = f"ICT-FaceKit-{ICT_COMMIT}/FaceXModel/"
    need = ["generic_neutral_mesh.obj", "vertex_indices.json", "identity099.obj", "jawOpen.obj"]
    return all(prefix + n in names for n in need) and f"ICT-FaceKit-{ICT_COMMIT}/LICENSE" in names
