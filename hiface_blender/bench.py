"""Benchmark: photo -> FaceResult, building the Blender object, enabling the add-on.

Timings only, printed as JSON by `python -m hiface_blender bench`; no pass/fail thresholds here.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Runs in a fresh interpreter: bpy first (Blender's own start-up is not ours to time), then the
# add-on is enabled the way Blender does it, from a user scripts folder that links to this package.
_ENABLE = r'''
import json, sys, time
import bpy, addon_utils
t = time.perf_counter()
mod = addon_utils.enable(sys.argv[1], default_set=True, handle_error=None)
enable = time.perf_counter() - t
if mod is None:
    raise SystemExit("add-on did not enable")
heavy = sorted(m for m in ("torch", "mediapipe", "cv2", "scipy") if m in sys.modules)
t = time.perf_counter()
addon_utils.disable(sys.argv[1], default_set=True, handle_error=None)
disable = time.perf_counter() - t
print(json.dumps({"enable": enable, "disable": disable, "heavy_modules_imported": heavy}))
'''


# Runs in a fresh interpreter per map size, so that its peak memory is that size's alone.
_DETAIL_SIZE = r'''
import ctypes, json, statistics, sys
from hiface_blender.bench import _load_image
from hiface_blender.core import detail as detail_module
from hiface_blender.core.reconstruct import Reconstructor, ReconstructSettings

def status_mb(key):   # this process's own figures (getrusage would count the parent's, inherited at fork)
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

def reset_peak():     # VmHWM restarts from the current RSS, so the next peak is the detail stage's own
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

size, runs, image, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] or None, sys.argv[4]
added, peak_is_own, peaks = [], [], []
compute_detail = detail_module.compute_detail

def release_free_memory():   # hand freed heap pages back, so RSS counts live memory only
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

def measured_compute_detail(*args, **kwargs):   # the stage alone, not the rest of the run
    release_free_memory()
    before = status_mb("VmRSS")
    peaks.append(status_mb("VmHWM"))
    peak_is_own.append(reset_peak())
    maps = compute_detail(*args, **kwargs)
    added.append(status_mb("VmHWM") - before)
    return maps

detail_module.compute_detail = measured_compute_detail
import scipy.sparse    # imported on the stage's first call: a module, not the stage's memory
rgb, _ = _load_image(image)
rec = Reconstructor(ReconstructSettings(device=device, detail=False, detail_size=size))
rec.run(rgb)                                   # first-call costs, without the detail stage
rec.settings.detail = True
seconds = [rec.run(rgb).report["seconds"]["detail"] for _ in range(runs)]
print(json.dumps({"detail_median_s": statistics.median(seconds), "detail_runs_s": seconds,
                  "peak_rss_mb": max(peaks + [status_mb("VmHWM")]),
                  "detail_added_mb": max(added), "detail_peak_is_own": all(peak_is_own)}))
'''


def bench_detail_sizes(sizes, runs: int, image: str | None = None, device: str = "auto") -> dict:
    """Detail-stage seconds and the process's peak memory for each map size (opt-in: 4096 takes
    about a minute a run on a 2-core CPU)."""
    out = {}
    for size in sizes:
        proc = subprocess.run([sys.executable, "-c", _DETAIL_SIZE, str(int(size)), str(max(1, runs)),
                               image or "", device], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=PACKAGE_DIR.parent)
        if proc.returncode != 0:
            out[str(size)] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            out[str(size)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _summary(values: list[float]) -> dict:
    return {"median_s": statistics.median(values), "runs_s": values}


def machine_info(device) -> dict:
    import numpy
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if getattr(device, "type", "") == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import mediapipe
        info["mediapipe"] = mediapipe.__version__
    except ImportError:
        pass
    return info


def _load_image(image):
    if image:
        from .core.imageio import load_photo
        return load_photo(image).rgb, str(image)
    import numpy as np
    from skimage import data
    return np.ascontiguousarray(data.astronaut()), "skimage.data.astronaut (512x512)"


def bench_enable(runs: int) -> dict:
    """Enable + disable in a fresh interpreter per run, so that nothing is imported already."""
    enable, disable, heavy = [], [], set()
    with tempfile.TemporaryDirectory(prefix="hiface-bench-") as scripts:
        addons = Path(scripts) / "addons"
        addons.mkdir()
        (addons / PACKAGE_DIR.name).symlink_to(PACKAGE_DIR, target_is_directory=True)
        env = dict(os.environ, BLENDER_USER_SCRIPTS=scripts,
                   BLENDER_USER_CONFIG=str(Path(scripts) / "config"))
        for _ in range(runs):
            proc = subprocess.run([sys.executable, "-c", _ENABLE, PACKAGE_DIR.name], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                return {"error": f"enabling the add-on failed: {tail}"}
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            enable.append(r["enable"])
            disable.append(r["disable"])
            heavy.update(r["heavy_modules_imported"])
    return {**_summary(enable), "disable_median_s": statistics.median(disable),
            "heavy_modules_imported_at_enable": sorted(heavy)}


def run_bench(runs: int = 5, image: str | None = None, device: str = "auto",
              quality: str = "standard", video: str | None = None) -> dict:
    from .core.reconstruct import Reconstructor, ReconstructSettings

    runs = max(1, int(runs))
    rgb, image_name = _load_image(image)
    t = time.perf_counter()
    rec = Reconstructor(ReconstructSettings(device=device, quality=quality, detail=False))
    load = time.perf_counter() - t

    def timed_run(detail: bool):
        rec.settings.detail = detail
        t = time.perf_counter()
        result = rec.run(rgb)
        return time.perf_counter() - t, result.report.get("seconds", {}), result

    # First-call costs (torch kernels, UV tables) are per process, not per photo.
    timed_run(False)
    timed_run(True)
    # Without and with detail in turns, so a slow spell of the machine falls on both alike; what
    # the detail stage adds is the median of each pair's difference.
    pairs = [(timed_run(False), timed_run(True)) for _ in range(runs)]

    def medians(stages):
        return {k: statistics.median(s[k] for s in stages if k in s) for k in stages[0]}

    coarse = [c[0] for c, _ in pairs]
    detailed = [d[0] for _, d in pairs]
    coarse_stages, detailed_stages = medians([c[1] for c, _ in pairs]), medians([d[1] for _, d in pairs])
    coarse_result, result = pairs[-1][0][2], pairs[-1][1][2]
    adds = [d - c for c, d in zip(coarse, detailed)]
    rec.close()

    import bpy

    from .blender.build import build_face_object

    def build_times(res):
        times = []
        for _ in range(runs):
            bpy.ops.wm.read_factory_settings(use_empty=True)
            t = time.perf_counter()
            build_face_object(res, rec.model)
            times.append(time.perf_counter() - t)
        bpy.ops.wm.read_factory_settings(use_empty=True)
        return times

    build = build_times(coarse_result)
    build_rig = build_times(result)

    out = {
        "image": image_name,
        "image_size": list(rgb.shape[:2]),
        "quality": quality,
        "runs": runs,
        "load_models_s": load,
        # Issue targets: photo -> FaceResult (models loaded) without and with the detail stage.
        "photo_to_result": {**_summary(coarse), "stage_medians_s": coarse_stages},
        "photo_to_result_with_detail": {**_summary(detailed), "stage_medians_s": detailed_stages},
        "detail_adds_median_s": statistics.median(adds),
        "detail_adds_runs_s": adds,
        "build_blender_object": _summary(build),
        "build_blender_object_with_detail_rig": _summary(build_rig),
        "enable_addon": bench_enable(runs),
        "landmark_error_iod": result.report.get("fit", {}).get("reprojection_iod_mean"),
        "machine": {**machine_info(rec.device), "blender": bpy.app.version_string},
    }
    out.update(_optional_benches(runs, device, video, result, rec.model))
    return out


def _optional_benches(runs: int, device: str, video: str | None, result, model) -> dict:
    """Benchmarks of the retargeting and detail-rig parts, where those parts are installed."""
    import bpy

    out = {}
    try:
        from .core.tracking import bench_tracking
    except ImportError:
        pass
    else:
        out["tracking"] = bench_tracking(runs=runs, clip=video, device=device)
    try:
        from .blender.animate import bench_keyframes
    except ImportError:
        pass
    else:
        out["keyframes_1000x53"] = bench_keyframes(n_frames=1000, repeats=runs)
    try:
        from .blender.detail_rig import bench_playback
    except ImportError:
        pass
    else:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        out["detail_playback"] = bench_playback(result, model, repeats=runs)
    return out
