"""Headless front door: `python -m hiface_blender reconstruct|bench|retarget|transfer ...`.

Errors the user can act on (bad photo, no face, missing model files) end with one line
`error: ...` on stderr and exit code 2; nothing is written then. bpy is imported only for
--blend / --render, torch and mediapipe only once a photo has loaded.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
OUTPUTS = ("face.npz", "face_camera.obj", "report.json", "face.blend", "render.png", "overlay.png",
           "comparison.png")


class _Progress:
    """Progress lines on stderr, one per new message or per 10 % step."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.last = (None, -1.0)

    def __call__(self, fraction: float, message: str) -> None:
        if message != self.last[0] or fraction - self.last[1] >= 0.1 or fraction >= 1.0 > self.last[1]:
            print(f"[{100 * fraction:3.0f}%] {message}", file=self.stream, flush=True)
            self.last = (message, fraction)


def publish(tmp: Path, out_dir: Path, report: dict, outputs) -> list[str]:
    """Write report.json last into the scratch folder, then move each output that exists into
    OUTDIR (os.replace: atomic within one file system). Returns the names moved."""
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    written = []
    for name in outputs:
        if (tmp / name).exists():
            os.replace(tmp / name, out_dir / name)
            written.append(name)
    return written


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_fd(fd: int, to_stderr: bool = False):
    """Silence (or send to stderr) what native code writes straight to a file descriptor:
    MediaPipe's TFLite and absl logging while the models load, Cycles' per-tile log. Python
    exceptions still propagate and are reported after the descriptor is restored."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        if to_stderr:
            os.dup2(2, fd)
            yield
        else:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), fd)
                yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


# --- files ------------------------------------------------------------------------------------


def write_obj(path: Path, vertices, model) -> None:
    """Polygon mesh with UVs in the face model's own vertex and polygon order."""
    import numpy as np

    v = np.asarray(vertices, np.float64)
    uv = np.asarray(model.uvs, np.float64)
    lines = ["# HiFace posed head: photo camera frame, OpenCV axes (x right, y down, z forward), mm",
             f"# {len(v)} vertices, {len(model.poly_start)} polygons"]
    lines += [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in v]
    lines += [f"vt {a:.6f} {b:.6f}" for a, b in uv]
    corners = [f"{a + 1}/{b + 1}" for a, b in zip(model.loop_vert.tolist(), model.loop_uv.tolist())]
    names = [str(n) for n in model.material_names]
    current = None
    for start, size, mat in zip(model.poly_start.tolist(), model.poly_size.tolist(),
                                model.poly_material.tolist()):
        if mat != current and 0 <= mat < len(names):
            lines.append(f"usemtl {names[mat]}")
            current = mat
        lines.append("f " + " ".join(corners[start:start + size]))
    path.write_text("\n".join(lines) + "\n")


def landmark_error(result) -> dict:
    """Landmark reprojection error, from the engine's report or recomputed from the landmarks."""
    import numpy as np

    fit = dict(result.report.get("fit", {}))
    err = np.linalg.norm(result.landmarks_fitted - result.landmarks_detected, axis=1)
    iod = fit.get("interocular_px")
    if not iod and len(result.landmarks_detected) == 478:  # outer eye corners, 300-W convention
        iod = float(np.linalg.norm(result.landmarks_detected[33] - result.landmarks_detected[263]))
    out = {
        "mean_px": float(err.mean()),
        "median_px": float(np.median(err)),
        "max_px": float(err.max()),
        "interocular_px": float(iod) if iod else None,
        "mean_fraction_of_interocular": float(err.mean() / iod) if iod else None,
        "n_landmarks": int(len(err)),
    }
    return out


def intrinsics_dict(result) -> dict:
    k = [[float(x) for x in row] for row in result.intrinsics]
    h, w = (int(x) for x in result.image_size)
    return {"fx": k[0][0], "fy": k[1][1], "cx": k[0][2], "cy": k[1][2], "K": k,
            "width": w, "height": h, "convention": "OpenCV: x right, y down, z forward; mm"}


def peak_memory(device: str) -> dict:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_mb": rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024.0}
    if device.startswith("cuda"):
        import torch
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def write_overlay(photo_rgb, render_path: Path, out_path: Path, opacity: float = 0.6) -> None:
    """The render laid over the photo, where the render has coverage."""
    import numpy as np
    from PIL import Image

    with Image.open(render_path) as im:
        im = im.convert("RGBA")
        h, w = photo_rgb.shape[:2]
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        r = np.asarray(im, np.float32) / 255.0
    alpha = opacity * r[..., 3:4]
    blend = (1.0 - alpha) * (photo_rgb.astype(np.float32) / 255.0) + alpha * r[..., :3]
    Image.fromarray(np.clip(blend * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(out_path)


def blender_outputs(result, model, photo_rgb, tmp: Path, *, blend: bool, render: bool,
                    samples: int, seconds: dict) -> None:
    import bpy

    from .blender.build import add_photo_camera, build_face_object, render_still
    from .blender.materials import image_from_rgb

    t = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = build_face_object(result, model)
    # The photo behind the face in camera view; the render itself stays transparent.
    add_photo_camera(result, obj, photo=image_from_rgb("HiFace Photo", photo_rgb))
    seconds["blender_build"] = time.perf_counter() - t
    scene = bpy.context.scene
    if render:
        _say(f"rendering with Cycles ({samples} samples)")
        t = time.perf_counter()
        with _quiet_fd(1):
            render_still(scene, str(tmp / "render.png"), samples=samples)
        seconds["render"] = time.perf_counter() - t
    if blend:
        with _quiet_fd(1):
            bpy.ops.file.pack_all()  # images travel inside the .blend
        with _quiet_fd(1):
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp / "face.blend"), check_existing=False,
                                        compress=True)


def write_detail_maps(result, folder: Path, fmt: str) -> dict:
    """The result's detail maps as files (core.detail.save_detail_maps); {} without detail."""
    from .core.detail import DETAIL_MAPS, save_detail_maps

    if not result.has_detail:
        return {}
    return save_detail_maps({m: getattr(result, f"detail_{m}") for m in DETAIL_MAPS}, folder, fmt)


# --- commands ---------------------------------------------------------------------------------


def cmd_reconstruct(args) -> int:
    from .core.errors import HiFaceError
    from .core.imageio import load_photo

    photo_path = Path(args.photo)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise HiFaceError(f"output {out_dir} exists and is not a folder")
    if args.samples < 1:
        raise HiFaceError("--samples must be at least 1")
    if args.no_detail and args.comparison:
        raise HiFaceError("--comparison shows the detail maps: it cannot be used with --no-detail")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    try:
        photo = load_photo(photo_path)
    except (OSError, ValueError) as e:  # undecodable or unreadable: the user's input, not a bug
        raise HiFaceError(f"cannot read {photo_path}: {e}") from e
    seconds["load_photo"] = time.perf_counter() - t0
    for note in photo.notes:
        _say(f"note: {note}")

    from .core.reconstruct import Reconstructor, ReconstructSettings
    from .core.result import posed_vertices

    t = time.perf_counter()
    _say("loading the face model and the landmark detector")
    with _quiet_fd(2):
        rec = Reconstructor(ReconstructSettings(device=args.device, quality=args.quality,
                                                landmark_backend=args.landmarks,
                                                data_dir=args.data_dir, detail=not args.no_detail,
                                                detail_size=args.detail_size,
                                                fill_neck_clothing=not args.keep_neck))
    seconds["load_models"] = time.perf_counter() - t
    try:
        result = rec.run(photo.rgb, progress=_Progress(), source_path=str(photo_path.resolve()),
                         notes=list(photo.notes))
    finally:
        rec.close()
    engine = dict(result.report)
    for note in engine.get("notes", []):
        if note not in photo.notes:
            _say(f"note: {note}")

    # Everything is written into a scratch folder first and moved in at the end, so a failure
    # half-way leaves no partial set of files behind.
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hiface-", dir=out_dir))
    try:
        t = time.perf_counter()
        result.save(tmp / "face.npz")
        write_obj(tmp / "face_camera.obj", posed_vertices(result, rec.model), rec.model)
        detail_maps = write_detail_maps(result, tmp, args.detail_format)
        seconds["write"] = time.perf_counter() - t
        if args.blend or args.render:
            blender_outputs(result, rec.model, photo.rgb, tmp, blend=args.blend, render=args.render,
                            samples=args.samples, seconds=seconds)
            if args.render:
                write_overlay(photo.rgb, tmp / "render.png", tmp / "overlay.png")
        if args.comparison:
            from .blender.comparison import render_detail_comparison

            _say("rendering the detail comparison with Cycles")
            t = time.perf_counter()
            with _quiet_fd(1):
                render_detail_comparison(result, rec.model, tmp / "comparison.png",
                                         samples=min(args.samples, 16), face_px=480)
            seconds["comparison"] = time.perf_counter() - t
        engine_seconds = engine.get("seconds", {})
        report = {
            "photo": str(photo_path.resolve()),
            "image_size": {"width": int(result.image_size[1]), "height": int(result.image_size[0])},
            "notes": engine.get("notes", photo.notes),
            "device": engine.get("device", str(rec.device)),
            "quality": args.quality,
            "landmark_backend": engine.get("landmark_backend", args.landmarks),
            "faces_found": engine.get("faces_found"),
            "seconds": {**{f"engine_{k}": v for k, v in engine_seconds.items()}, **seconds,
                        "command_total": time.perf_counter() - t0},
            "peak_memory_mb": peak_memory(engine.get("device", "cpu")),
            "intrinsics": intrinsics_dict(result),
            "landmark_reprojection": landmark_error(result),
            "detail_maps": detail_maps,
            "engine": engine,
        }
        from .core.detail import detail_map_files
        written = publish(tmp, out_dir, report, (*OUTPUTS, *detail_map_files(args.detail_format)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    err = report["landmark_reprojection"]
    frac = err["mean_fraction_of_interocular"]
    _say(f"wrote {', '.join(written)} to {out_dir} in {report['seconds']['command_total']:.1f} s; "
         f"landmark error {err['mean_px']:.2f} px"
         + (f" ({100 * frac:.2f}% of the inter-ocular distance)" if frac is not None else ""))
    return 0


def cmd_transfer(args) -> int:
    from .core.errors import HiFaceError
    from .core.result import FaceResult
    from .core.transfer import transfer_result

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise HiFaceError(f"output {out_dir} exists and is not a folder")
    t0 = time.perf_counter()
    faces = []
    for path in (Path(args.source), Path(args.target)):
        if not path.is_file():
            raise HiFaceError(f"{path} does not exist")
        try:
            faces.append(FaceResult.load(path))
        except ValueError as e:
            raise HiFaceError(str(e)) from e
    try:
        result = transfer_result(*faces)
    except ValueError as e:
        raise HiFaceError(str(e)) from e
    model = None
    if args.blend:
        from .core.model_data import FaceModelData
        from .paths import face_model_path

        model = FaceModelData.load(face_model_path())

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hiface-", dir=out_dir))
    try:
        result.save(tmp / "face.npz")
        if model is not None:
            import bpy

            from .blender.build import build_face_object

            bpy.ops.wm.read_factory_settings(use_empty=True)
            build_face_object(result, model)
            with _quiet_fd(1):
                bpy.ops.file.pack_all()
                bpy.ops.wm.save_as_mainfile(filepath=str(tmp / "face.blend"),
                                            check_existing=False, compress=True)
        report = {"source": str(Path(args.source).resolve()),
                  "target": str(Path(args.target).resolve()),
                  "seconds": {"command_total": time.perf_counter() - t0}}
        written = publish(tmp, out_dir, report, ("face.npz", "face.blend", "report.json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _say(f"wrote {', '.join(written)} to {out_dir}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench
    from .core.errors import HiFaceError

    from .core.detail import SIZES as DETAIL_SIZES

    sizes = []
    if args.detail_sizes:
        try:
            sizes = [int(x) for x in args.detail_sizes.split(",")]
        except ValueError:
            sizes = [0]
        if not set(sizes) <= set(DETAIL_SIZES):
            raise HiFaceError(f"--detail-sizes takes sizes from {', '.join(map(str, DETAIL_SIZES))}, "
                              f"comma-separated; got {args.detail_sizes}")
    with _quiet_fd(1, to_stderr=True):  # stdout carries the JSON alone
        report = run_bench(runs=args.runs, image=args.image, device=args.device,
                           quality=args.quality, video=args.video)
        if sizes:
            from .bench import bench_detail_sizes
            report["detail_sizes"] = bench_detail_sizes(sizes, min(args.runs, 3), args.image,
                                                        args.device)
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .core.detail import SIZES as DETAIL_SIZES

    p = argparse.ArgumentParser(prog="python -m hiface_blender",
                                description="HiFace: one photo to an animatable 3D face.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reconstruct", help="reconstruct a face from a photo",
                       description="Reconstruct a face from one photo and write face.npz, "
                                   "face_camera.obj and report.json into OUTDIR.")
    r.add_argument("photo", metavar="PHOTO", help="the photo (JPEG, PNG, TIFF, WebP...)")
    r.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="output folder")
    r.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="torch device for fitting (auto: CUDA, then MPS, then CPU)")
    r.add_argument("--quality", choices=("fast", "standard", "high"), default="standard",
                   help="fitting iterations and texture size")
    r.add_argument("--landmarks", choices=("mediapipe", "face-alignment"), default="mediapipe",
                   help="landmark detector (face-alignment downloads its weights on first use)")
    r.add_argument("--data-dir", metavar="DIR", help="folder with face_model.npz and "
                   "face_landmarker.task (default: found automatically)")
    r.add_argument("--detail-size", type=int, choices=DETAIL_SIZES, default=1024, metavar="N",
                   help="side of the detail maps in texels: 512, 1024, 2048 or 4096 (1024)")
    r.add_argument("--detail-format", choices=("png", "exr"), default="png",
                   help="detail map files: 16-bit PNG (scale in its metadata) or float EXR in "
                        "metres with a .json beside it (png)")
    r.add_argument("--no-detail", action="store_true",
                   help="skip the detail stage (no detail maps, no detail rig)")
    r.add_argument("--keep-neck", action="store_true",
                   help="texture the neck from the photo as it is, clothing or beard included "
                        "(default: what is not skin on the neck is filled with skin)")
    r.add_argument("--blend", action="store_true", help="also write face.blend")
    r.add_argument("--comparison", action="store_true",
                   help="also write comparison.png: neutral, smile + squint, and smile + squint "
                        "with Dynamic Detail 0, from the photo's camera and a three-quarter view")
    r.add_argument("--render", action="store_true",
                   help="also write a Cycles render.png from the photo's camera and overlay.png")
    r.add_argument("--samples", type=int, default=32, metavar="N", help="Cycles samples (32)")
    r.set_defaults(fn=cmd_reconstruct)

    b = sub.add_parser("bench", help="time the stages and print JSON")
    b.add_argument("--runs", type=int, default=5, help="repetitions per measurement (5)")
    b.add_argument("--image", metavar="PATH",
                   help="photo to use (default: the 512x512 scikit-image astronaut)")
    b.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    b.add_argument("--quality", choices=("fast", "standard", "high"), default="standard")
    b.add_argument("--video", metavar="PATH",
                   help="clip for the tracking speed (default: the first GRID sample beside the checkout)")
    b.add_argument("--detail-sizes", metavar="N,N", help="also time the detail stage and its "
                   "peak memory at these map sizes, e.g. 512,1024,2048,4096 (up to 3 runs each)")
    b.set_defaults(fn=cmd_bench)

    from .cli_retarget import add_arguments, cmd_retarget
    t = sub.add_parser("retarget", help="track a video's expressions and head motion for a face",
                       description="Track expressions and head pose in VIDEO for the face in "
                                   "face.npz; write track.npz and report.json into OUTDIR.")
    add_arguments(t)
    t.set_defaults(fn=cmd_retarget)

    x = sub.add_parser("transfer", help="drive one face by another's expression and wrinkles",
                       description="Write OUTDIR/face.npz: the TARGET face with the SOURCE "
                                   "face's expression and dynamic detail maps (the target keeps "
                                   "its identity, texture and static detail).")
    x.add_argument("source", metavar="SOURCE.npz", help="face.npz giving expression and wrinkles")
    x.add_argument("target", metavar="TARGET.npz", help="face.npz of the person to drive")
    x.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="output folder")
    x.add_argument("--blend", action="store_true", help="also write face.blend built from it")
    x.set_defaults(fn=cmd_transfer)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .core.errors import HiFaceError

    try:
        return args.fn(args)
    except HiFaceError as e:
        return _fail(e)
    except OSError as e:  # e.g. an output folder that cannot be written
        return _fail(e)
    except (MemoryError, RuntimeError) as e:
        from .core.errors import is_out_of_memory
        if not is_out_of_memory(e):
            raise
        _say("error: out of memory; try a smaller --detail-size, --quality fast, a smaller "
             "photo or the other device")
        return 1
    except KeyboardInterrupt:
        _say("error: interrupted")
        return 130


def _fail(e: BaseException) -> int:
    msg = " ".join(str(e).split()) or type(e).__name__
    _say(f"error: {msg}")
    return EXIT_BAD_INPUT
