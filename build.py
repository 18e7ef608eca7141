#!/usr/bin/env python3
"""Set up, test, demonstrate and package HiFace for Blender.

    python3 build.py setup      .venv with pinned dependencies, assets fetched and converted
    python3 build.py demo       setup, then reconstruct the sample photo into out/demo/ and
                                retarget a driving video onto it [--video PATH]
    python3 build.py test       setup, then the whole test suite (extra arguments go to pytest)
    python3 build.py package    setup, then the Blender extension zip(s) in dist/
    python3 build.py bench      setup, then the benchmark (JSON on stdout)

Standard library only, so it runs with any Python 3.10+; the project's own work happens inside
the Python 3.11 virtual environment it creates (bpy 4.5 exists for CPython 3.11 only).
Assets come from their upstream URLs, or from the directory named by HIFACE_ASSET_MIRROR.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements" / "venv.txt"
REQUIREMENTS_NODEPS = ROOT / "requirements" / "mediapipe.txt"
# Driving video of the demo when none is given: the first GRID sample beside the checkout, else
# a synthetic performance rendered on the spot.
GRID_SAMPLES = ROOT.parent / "shared" / "samples" / "grid"
VENV_STAMP = VENV / "hiface-venv.stamp"
MANIFEST = ROOT / "blender_manifest.toml"
WHEELS = ROOT / "wheels"
STAGE = ROOT / "build" / "extension"
DIST = ROOT / "dist"
PYTHON = (3, 11)

# What the extension ships besides the add-on: these distributions and everything they require,
# in the versions installed in .venv, so that the package holds exactly what the tests ran with.
EXTENSION_ROOTS = ("torch", "mediapipe", "opencv-python-headless", "pillow", "scipy")
# Not shipped: numpy (Blender provides it), opencv-contrib-python (mediapipe's choice of cv2; the
# headless build serves the same import), sounddevice (mediapipe imports it only for audio, and
# optionally), setuptools (torch needs it only to compile extensions).
EXTENSION_EXCLUDE = ("numpy", "opencv-contrib-python", "sounddevice", "setuptools")
# Blender 4.5 needs glibc 2.28 on Linux, so any manylinux wheel up to 2.28 is fine. pip download
# takes each accepted tag literally, older aliases included.
WHEEL_PLATFORMS = ([f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)]
                   + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
BLENDER_PLATFORM = "linux-x64"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"build.py: {msg}", file=sys.stderr, flush=True)


def run(cmd: list, *, what: str, **kw) -> subprocess.CompletedProcess:
    """Run a command; a failure becomes one BuildError naming the step."""
    try:
        proc = subprocess.run([str(c) for c in cmd], **kw)
    except OSError as e:
        raise BuildError(f"{what}: cannot run {cmd[0]} ({e})") from e
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit code {proc.returncode}); see the output above")
    return proc


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# ---------------------------------------------------------------------------------------------
# setup


def find_python() -> str:
    """A CPython 3.11 to create the venv with: this one, or python3.11 on PATH."""
    if sys.version_info[:2] == PYTHON and sys.implementation.name == "cpython":
        # The base interpreter, not a venv's, so that .venv never nests inside another venv.
        return getattr(sys, "_base_executable", sys.executable) or sys.executable
    found = shutil.which("python3.11") or shutil.which("python3.11.exe")
    if found:
        return found
    raise BuildError(
        "bpy 4.5 needs CPython 3.11 and none was found: install python3.11 (with its venv module) "
        "and run build.py again")


def _venv_fingerprint() -> str:
    h = hashlib.sha256()
    for f in (REQUIREMENTS, REQUIREMENTS_NODEPS):
        h.update(f.read_bytes())
    return h.hexdigest()


def _venv_version() -> tuple[int, ...] | None:
    try:
        cfg = (VENV / "pyvenv.cfg").read_text()
    except OSError:
        return None
    m = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", cfg, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None


def setup_venv() -> Path:
    py = venv_python()
    fingerprint = _venv_fingerprint()
    usable = py.exists() and _venv_version() == PYTHON
    if usable and VENV_STAMP.exists() and VENV_STAMP.read_text().strip() == fingerprint:
        return py
    if not usable:
        base = find_python()
        log(f"creating {VENV.relative_to(ROOT)} with {base}")
        if VENV.exists():
            shutil.rmtree(VENV)
        run([base, "-m", "venv", VENV], what="creating the virtual environment")
    log("installing pinned dependencies (first time: several minutes, bpy and torch are large)")
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    run(pip + ["-r", REQUIREMENTS], what="pip install -r requirements/venv.txt")
    run(pip + ["--no-deps", "-r", REQUIREMENTS_NODEPS], what="pip install mediapipe")
    VENV_STAMP.write_text(fingerprint + "\n")
    return py


# Runs inside .venv: fetch the assets, convert them once into the user cache directory, copy the
# landmarker and the licence notices beside the converted model, and save the sample photo.
_PREPARE = r'''
import hashlib, importlib.metadata, json, os, shutil, sys, zipfile
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from hiface_blender import paths
from hiface_blender.core import assets
from hiface_blender.core.errors import HiFaceError
from hiface_blender.core.model_data import FORMAT_VERSION

def say(msg):
    print(f"build.py: {msg}", file=sys.stderr, flush=True)

pkg = Path(sys.argv[1]) / "hiface_blender" / "core"
data = paths.user_cache_dir()
cache = data.parent
try:
    say("fetching assets" + (" from the mirror" if os.environ.get("HIFACE_ASSET_MIRROR") else ""))
    ict = assets.fetch(assets.ICT_FACEKIT, cache / "downloads")
    task = assets.fetch(assets.FACE_LANDMARKER, cache / "downloads")

    h = hashlib.sha256(f"format {FORMAT_VERSION}; ict {assets.ICT_COMMIT}; "
                       f"task {assets.FACE_LANDMARKER.sha256}".encode())
    # Everything the conversion and its landmark calibration run through.
    for name in ("convert.py", "correspondence.py", "model_data.py", "calibrate.py", "synthetic.py",
                 "raster.py", "texture.py", "fitting.py", "face_model.py", "landmarks.py",
                 "geometry.py", "landmark_noise.py", "gaze.py"):
        f = pkg / name
        h.update(f.read_bytes() if f.exists() else b"-")
    stamp_file = data / "build-stamp.json"
    stamp = {"format": FORMAT_VERSION, "sources": h.hexdigest()}
    model = data / paths.FACE_MODEL
    try:
        fresh = json.loads(stamp_file.read_text()) == stamp and model.is_file()
    except (OSError, ValueError):
        fresh = False
    if fresh:
        say(f"face model up to date in {data}")
    else:
        data.mkdir(parents=True, exist_ok=True)
        stamp_file.unlink(missing_ok=True)
        say(f"converting ICT-FaceKit into {model}")
        from hiface_blender.core.convert import convert_ict
        convert_ict(ict, task, model, log=lambda m: say("  " + m))
        (data / paths.LANDMARKER).unlink(missing_ok=True)  # an older copy may be read-only
        shutil.copyfile(task, data / paths.LANDMARKER)
        with zipfile.ZipFile(ict) as z:
            (data / "LICENSE-ICT-FaceKit.txt").write_bytes(
                z.read(f"ICT-FaceKit-{assets.ICT_COMMIT}/LICENSE"))
        dist = importlib.metadata.distribution("mediapipe")
        lic = next((f for f in dist.files or () if f.name == "LICENSE"), None)
        if lic is None:
            raise HiFaceError("the installed mediapipe has no LICENSE file to ship with its model")
        (data / "LICENSE-MediaPipe.txt").write_text(Path(dist.locate_file(lic)).read_text())
        (data / "NOTICE.txt").write_text(
            "Third-party data in this folder\n\n"
            f"{paths.FACE_MODEL}: converted from the ICT Face Model Light (ICT-FaceKit, "
            f"https://github.com/ICT-VGL/ICT-FaceKit, commit {assets.ICT_COMMIT}), "
            "MIT licence, see LICENSE-ICT-FaceKit.txt. It also holds a landmark correspondence "
            "derived from MediaPipe's canonical face geometry (Apache-2.0).\n\n"
            f"{paths.LANDMARKER}: MediaPipe Face Landmarker model bundle, unmodified "
            f"({assets.FACE_LANDMARKER.url}), Apache License 2.0, see LICENSE-MediaPipe.txt.\n")
        stamp_file.write_text(json.dumps(stamp))

    sample = cache / "samples" / "astronaut.png"
    if not sample.is_file():
        import numpy as np
        from PIL import Image
        from skimage import data as skdata
        sample.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(skdata.astronaut())).save(sample)
except HiFaceError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
print(json.dumps({"data_dir": str(data), "sample": str(sample)}))
'''


def setup() -> dict:
    t0 = time.perf_counter()
    py = setup_venv()
    mirror = os.environ.get("HIFACE_ASSET_MIRROR")
    env = dict(os.environ)
    if mirror:
        env["HIFACE_ASSET_MIRROR"] = str(Path(mirror).expanduser().resolve())
    proc = run([py, "-c", _PREPARE, ROOT], what="preparing the model data", env=env,
               stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"setup done in {time.perf_counter() - t0:.1f} s; model data in {info['data_dir']}")
    return info


# ---------------------------------------------------------------------------------------------
# commands


def cmd_setup(args) -> int:
    setup()
    return 0


def demo_video(given: str | None) -> Path | None:
    if given:
        path = Path(given)
        if not path.is_file():
            raise BuildError(f"--video: {path} is not a file")
        return path
    clips = sorted(GRID_SAMPLES.glob("*.mpg"))
    return clips[0] if clips else None


def cmd_demo(args) -> int:
    video = demo_video(args.video)
    info = setup()
    out = ROOT / "out" / "demo"
    run([venv_python(), "-m", "hiface_blender", "reconstruct", info["sample"], "-o", out,
         "--blend", "--render", "--comparison"], what="the demo reconstruction", cwd=ROOT)
    for name in ("face.blend", "render.png", "overlay.png", "comparison.png"):
        if not (out / name).is_file():
            raise BuildError(f"the demo did not write {out / name}")
    log(f"demo written to {out}: face.blend, render.png, overlay.png (render laid over the photo), "
        "comparison.png (expression wrinkles on and off)")
    if video is None:
        video = out / "performance.mp4"
        log(f"no driving video given and none in {GRID_SAMPLES}: rendering a synthetic "
            f"performance into {video}")
        run([venv_python(), "-m", "hiface_blender.core.performance", video],
            what="rendering the demo performance", cwd=ROOT)
    anim = out / "retarget"
    run([venv_python(), "-m", "hiface_blender", "retarget", video, "--face", out / "face.npz",
         "-o", anim, "--blend", "--render"], what="the demo retargeting", cwd=ROOT)
    for name in ("anim.blend", "frames.png"):
        if not (anim / name).is_file():
            raise BuildError(f"the demo did not write {anim / name}")
    log(f"retargeting written to {anim}: anim.blend (the face performing {video.name}), "
        "frames.png (video frames above the face rendered at the same moments)")
    return 0


def cmd_test(args) -> int:
    setup()
    return subprocess.call([str(venv_python()), "-m", "pytest", "tests", *args.rest], cwd=ROOT)


def cmd_bench(args) -> int:
    setup()
    return subprocess.call([str(venv_python()), "-m", "hiface_blender", "bench", *args.rest],
                           cwd=ROOT)


def _manifest_field(text: str, key: str) -> str:
    m = re.search(rf'^{key}\s*=\s*"([^"]*)"', text, re.M)
    if not m:
        raise BuildError(f"blender_manifest.toml has no {key}")
    return m.group(1)


# Runs inside .venv: the installed distributions needed by the roots, with their versions.
_CLOSURE = r'''
import importlib.metadata as md, json, re, sys
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
roots, exclude = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
found, todo = {}, [norm(r) for r in roots]
while todo:
    name = todo.pop()
    if name in found or name in exclude:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit(f"error: {name} is needed by the extension but not installed in .venv")
    found[name] = dist.version
    for spec in dist.requires or ():
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(norm(req.name))
print(json.dumps(found))
'''


def _extension_versions(py: Path) -> dict[str, str]:
    out = run([py, "-c", _CLOSURE, json.dumps(EXTENSION_ROOTS), json.dumps(EXTENSION_EXCLUDE)],
              what="listing the extension's dependencies", stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download_wheels(py: Path) -> list[Path]:
    """The linux-x64 wheels the extension ships, in the versions installed in .venv, into wheels/."""
    versions = _extension_versions(py)
    pins = [f"{n}=={v}" for n, v in sorted(versions.items())]
    if "+cpu" not in versions["torch"]:
        log(f"warning: .venv has torch {versions['torch']}, not a CPU build; the package "
            "ships that wheel, which needs NVIDIA's runtime packages that it does not include")
    WHEELS.mkdir(exist_ok=True)
    log(f"downloading {len(pins)} wheels for {BLENDER_PLATFORM}, CPython 3.11 into wheels/")
    run([py, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off",
         "--no-deps", "--only-binary=:all:",
         *(a for tag in WHEEL_PLATFORMS for a in ("--platform", tag)),
         "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
         "--dest", WHEELS, *pins], what="pip download of the extension's wheels")
    wanted = set(versions.items())
    keep = []
    for whl in sorted(WHEELS.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if (_norm(name), version) in wanted:
            keep.append(whl)
        else:
            whl.unlink()  # an older pin or a dropped package
    if len(keep) != len(wanted):
        raise BuildError(f"expected {len(wanted)} wheels in wheels/, found {len(keep)}")
    return keep


def _blender_ext_tool(py: Path) -> Path:
    out = subprocess.run([str(py), "-c", "import importlib.util as u; "
                          "print(u.find_spec('bpy').submodule_search_locations[0])"],
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    tools = sorted(Path(out).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py")) if out else []
    if not tools:
        raise BuildError("Blender's extension tool (bl_pkg/cli/blender_ext.py) not found in the "
                         "bpy installed in .venv")
    return tools[-1]


def _copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the wheels are large and never modified in place
    except OSError:
        shutil.copy2(src, dst)


def stage(wheels: list[Path], data_dir: Path) -> Path:
    """One folder as Blender's tool wants it: __init__.py beside blender_manifest.toml."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    src = ROOT / "hiface_blender"

    def ignore(folder, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}
        if Path(folder) == src:
            skip.add("data")  # a developer's local data: the staged copy comes from the build
        return skip

    shutil.copytree(src, STAGE, ignore=ignore)
    (STAGE / "wheels").mkdir()
    for whl in wheels:
        _copy(whl, STAGE / "wheels" / whl.name)
    (STAGE / "data").mkdir()
    for f in sorted(data_dir.iterdir()):
        if f.is_file() and f.name != "build-stamp.json":
            _copy(f, STAGE / "data" / f.name)
    text = MANIFEST.read_text()
    listing = "wheels = [\n" + "".join(f'  "./wheels/{w.name}",\n' for w in wheels) + "]"
    text, n = re.subn(r"^wheels\s*=\s*\[[^\]]*\]", listing, text, flags=re.M)
    if n == 0:
        text = text.rstrip("\n") + "\n\n" + listing + "\n"
    (STAGE / "blender_manifest.toml").write_text(text)
    return STAGE


def cmd_package(args) -> int:
    info = setup()
    py = venv_python()
    t0 = time.perf_counter()
    wheels = download_wheels(py)
    staged = stage(wheels, Path(info["data_dir"]))
    tool = _blender_ext_tool(py)
    log("validating the staged extension")
    run([py, tool, "validate", staged], what="extension validation")
    text = MANIFEST.read_text()
    ext_id, version = _manifest_field(text, "id"), _manifest_field(text, "version")
    DIST.mkdir(exist_ok=True)
    for old in DIST.glob(f"{ext_id}-*.zip"):
        old.unlink()
    log("building the extension zip(s)")
    run([py, tool, "build", "--source-dir", staged, "--output-dir", DIST, "--split-platforms"],
        what="extension build")
    zips = sorted(DIST.glob(f"{ext_id}-{version}-*.zip"))
    if not zips:
        raise BuildError(f"the extension tool wrote no {ext_id}-{version}-*.zip into dist/")
    for z in zips:
        log(f"{z.relative_to(ROOT)}: {z.stat().st_size / 2**20:.0f} MiB")
    log(f"package done in {time.perf_counter() - t0:.1f} s (after setup)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (
            ("setup", cmd_setup, "create .venv, fetch and convert the assets"),
            ("demo", cmd_demo, "reconstruct the sample photo into out/demo/"),
            ("test", cmd_test, "run the test suite (extra arguments go to pytest)"),
            ("package", cmd_package, "build the Blender extension zip(s) into dist/"),
            ("bench", cmd_bench, "run the benchmark (extra arguments go to it)")):
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(fn=fn)
        if name == "demo":
            p.add_argument("--video", metavar="CLIP", help="driving video to retarget onto the "
                           f"demo face (default: the first clip in {GRID_SAMPLES})")
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("test", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.fn(args)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
