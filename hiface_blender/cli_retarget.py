"""`python -m hiface_blender retarget VIDEO --face face.npz -o OUTDIR`: the command's body.

Writes track.npz and report.json; with --blend anim.blend, and with --render frames.png (a few
video frames above Cycles renders of the face at the same moments), both needing bpy. Bad input
ends with `error: ...` and exit code 2 from cli.main, with nothing written: everything goes to a
scratch folder that is moved in at the end.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from .cli import publish

OUTPUTS = ("track.npz", "report.json", "anim.blend", "frames.png")
MAX_STRIP_FRAMES = 12


def add_arguments(r) -> None:
    r.add_argument("video", metavar="VIDEO", help="the driving video (mp4, mov, avi, mpg...)")
    r.add_argument("--face", metavar="FACE_NPZ", required=True,
                   help="face.npz written by `reconstruct`: the target face")
    r.add_argument("-o", "--output", metavar="OUTDIR", required=True, help="output folder")
    r.add_argument("--start", type=int, default=0, metavar="N", help="first frame (0)")
    r.add_argument("--end", type=int, default=None, metavar="N",
                   help="frame to stop before (default: the end of the video)")
    r.add_argument("--stride", type=int, default=1, metavar="N", help="use every N-th frame (1)")
    r.add_argument("--smoothing", type=float, default=0.5, metavar="S",
                   help="temporal smoothing strength, 0 (none) to 1 (0.5)")
    r.add_argument("--identity", choices=("video", "target"), default="video",
                   help="face shape used while tracking: estimated from the video (the performer, "
                        "default) or the target face's (same person in photo and video)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="torch device for fitting (auto: CUDA, then MPS, then CPU)")
    r.add_argument("--data-dir", metavar="DIR", help="folder with face_model.npz and "
                   "face_landmarker.task (default: found automatically)")
    r.add_argument("--blend", action="store_true", help="also write anim.blend (needs bpy)")
    r.add_argument("--render", action="store_true",
                   help="also write frames.png: video frames with the most different expressions "
                        "above Cycles renders of the animated face at the same moments (needs bpy)")
    r.add_argument("--render-frames", type=int, default=4, metavar="N",
                   help=f"how many moments frames.png shows, 1 to {MAX_STRIP_FRAMES} (4)")
    r.add_argument("--samples", type=int, default=16, metavar="N",
                   help="Cycles samples for frames.png (16)")


class _Progress:
    def __init__(self) -> None:
        self.last = -1.0
        self.message = None

    def __call__(self, fraction: float, message: str) -> None:
        head = message.split(":")[0]
        if head != self.message or fraction - self.last >= 0.1 or fraction >= 1.0 > self.last:
            print(f"[{100 * fraction:3.0f}%] {message}", file=sys.stderr, flush=True)
            self.last, self.message = fraction, head


def cmd_retarget(args) -> int:
    from .core.errors import HiFaceError
    from .core.result import FaceResult

    t0 = time.perf_counter()
    video = Path(args.video)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise HiFaceError(f"output {out_dir} exists and is not a folder")
    if not video.is_file():
        raise HiFaceError(f"video not found: {video}")
    if not 0.0 <= args.smoothing <= 1.0:
        raise HiFaceError(f"--smoothing must be between 0 and 1, got {args.smoothing}")
    try:
        face = FaceResult.load(args.face)
    except (OSError, ValueError) as e:
        raise HiFaceError(str(e)) from e
    if not 1 <= args.render_frames <= MAX_STRIP_FRAMES:
        raise HiFaceError(f"--render-frames must be between 1 and {MAX_STRIP_FRAMES}, "
                          f"got {args.render_frames}")
    if args.samples < 1:
        raise HiFaceError("--samples must be at least 1")
    animate = None
    if args.blend or args.render:
        try:
            from .blender import animate  # noqa: F811
        except ImportError as e:
            flag = "--blend" if args.blend else "--render"
            raise HiFaceError(f"{flag} is not available: {e}") from None

    from .core.tracking import Tracker, TrackSettings

    settings = TrackSettings(device=args.device, smoothing=args.smoothing, start=args.start,
                             end=args.end, stride=args.stride, identity=args.identity,
                             data_dir=args.data_dir)
    t = time.perf_counter()
    print("loading the face model and the landmark detector", file=sys.stderr, flush=True)
    tracker = Tracker(None, settings)
    load_s = time.perf_counter() - t
    track = tracker.track(video, face, progress=_Progress())
    for note in track.report.get("notes", []):
        print(f"note: {note}", file=sys.stderr, flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hiface-", dir=out_dir))
    try:
        track.save(tmp / "track.npz")
        if animate is not None:
            seconds = _blender_outputs(animate, args, face, track, tracker.model, video, tmp)
            track.report["seconds"].update(seconds)
        r = track.report
        h, w = (int(x) for x in track.image_size)
        k = [[float(x) for x in row] for row in track.intrinsics]
        report = {
            "video": str(video.resolve()),
            "face": str(Path(args.face).resolve()),
            "frames": r["frames"],
            "frames_with_face": r["frames_with_face"],
            "frames_without_face": r["frames_without_face"],
            "filled_frames": r["filled_frames"],
            "fps": r["fps"],
            "seconds": {**r["seconds"], "load_models": load_s,
                        "command_total": time.perf_counter() - t0},
            "frames_per_second": r["frames_per_second"],
            "intrinsics": {"fx": k[0][0], "fy": k[1][1], "cx": k[0][2], "cy": k[1][2], "K": k,
                           "width": w, "height": h,
                           "convention": "OpenCV: x right, y down, z forward; mm"},
            "engine": r,
        }
        written = publish(tmp, out_dir, report, OUTPUTS)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {', '.join(written)} to {out_dir}: {report['frames']} frames, "
          f"{report['filled_frames']} filled, {report['frames_per_second']:.1f} frames/s",
          file=sys.stderr, flush=True)
    return 0


def _blender_outputs(animate, args, face, track, model, video: Path, tmp: Path) -> dict:
    """anim.blend and/or frames.png into the scratch folder; returns their seconds."""
    from .cli import _quiet_fd

    seconds = {}
    t = time.perf_counter()
    with _quiet_fd(1):      # Blender's "Info: Saved as ..." lines
        obj = animate.animated_scene(face, model, track)
        if args.blend:
            animate.save_blend(tmp / "anim.blend")
    if args.blend:
        seconds["write_blend"] = time.perf_counter() - t
    if args.render:
        print(f"rendering {args.render_frames} frames with Cycles ({args.samples} samples)",
              file=sys.stderr, flush=True)
        t = time.perf_counter()
        picks = animate.distinct_frames(track.expression, args.render_frames)
        with _quiet_fd(1):
            animate.render_retarget_strip(obj, track, video, tmp / "frames.png", indices=picks,
                                          samples=args.samples)
        seconds["render_frames"] = time.perf_counter() - t
    return seconds
