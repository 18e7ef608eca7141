"""Background reconstruction jobs.

Contract: the worker thread never touches bpy. Its inputs are plain values copied on the main
thread; it posts ("progress", fraction, text), ("done", payload), ("error", text) or
("cancelled",) to a queue. `pump()` drains the queue on the main thread: it is called by a
`bpy.app.timers` callback in the UI and directly by headless code (timers do not fire there),
and it alone applies results to Blender data. One job at a time.
"""
from __future__ import annotations

import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import bpy
import numpy as np

_TICK = 0.1  # seconds between timer drains while a job runs


@dataclass(frozen=True)
class Request:
    """Everything the worker needs, as plain values."""
    device: str = "auto"
    quality: str = "standard"
    landmark_backend: str = "mediapipe"
    data_dir: str = ""
    photo_path: str = ""              # read in the worker...
    rgb: np.ndarray | None = None     # ...or pixels already copied from a Blender image
    source_label: str = ""            # recorded on the object as the source


@dataclass
class Payload:
    """What the worker hands to the main thread."""
    result: Any                       # FaceResult
    model: Any                        # FaceModelData
    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass
class _Job:
    request: Request
    on_done: Callable[[Payload], str | None]
    cancel: threading.Event = field(default_factory=threading.Event)
    queue: "queue.Queue[tuple]" = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None


_job: _Job | None = None
_last: dict = {"state": "idle", "message": ""}
_cache_lock = threading.Lock()
_cache: dict = {"key": None, "reconstructor": None}


def is_running() -> bool:
    return _job is not None


def last_outcome() -> tuple[str, str]:
    """(state, message) of the last job: idle, running, done, error or cancelled."""
    return _last["state"], _last["message"]


def _set_ui(progress: float | None = None, status: str | None = None) -> None:
    wm = bpy.context.window_manager
    if wm is None or not hasattr(wm, "hiface_progress"):
        return
    if progress is not None:
        wm.hiface_progress = max(0.0, min(1.0, progress))
    if status is not None:
        wm.hiface_status = status
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "STATUSBAR"}:
                area.tag_redraw()


def start(request: Request, on_done: Callable[[Payload], str | None]) -> None:
    """Start a job (main thread). `on_done(payload)` runs on the main thread from `pump` and
    returns an optional note for the status line. Raises RuntimeError if one is running."""
    global _job
    if _job is not None:
        raise RuntimeError("A HiFace reconstruction is already running")
    job = _Job(request=request, on_done=on_done)
    job.thread = threading.Thread(target=_work, args=(job,), name="HiFace reconstruction",
                                  daemon=True)
    _job = job
    _last.update(state="running", message="")
    _set_ui(0.0, "Starting")
    job.thread.start()
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=_TICK)


def cancel() -> None:
    """Ask the running job to stop; its result, if any, is discarded."""
    if _job is not None:
        _job.cancel.set()
        _set_ui(status="Cancelling")


def stop() -> None:
    """Abandon the job at once and remove the timer (unregister, file load). The worker thread
    ends at its next cancel check; nothing it produces is applied."""
    global _job
    if _job is not None:
        _job.cancel.set()
        _job = None
        _last.update(state="cancelled", message="Cancelled")
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)


def release_models() -> None:
    """Drop the cached Reconstructor (frees the models' memory)."""
    with _cache_lock:
        rec = _cache["reconstructor"]
        _cache.update(key=None, reconstructor=None)
    if rec is not None and hasattr(rec, "close"):
        try:
            rec.close()
        except Exception:
            pass


def _tick():
    return _TICK if pump() else None


def pump() -> bool:
    """Drain the queue on the main thread; returns True while the job still runs."""
    global _job
    job = _job
    if job is None:
        return False
    while True:
        try:
            msg = job.queue.get_nowait()
        except queue.Empty:
            return True
        kind = msg[0]
        if kind == "progress":
            if not job.cancel.is_set():
                _set_ui(msg[1], msg[2])
            continue
        _job = None
        if job.cancel.is_set():  # whatever arrives after a cancel request is dropped
            kind = "cancelled"
        if kind == "done":
            try:
                note = job.on_done(msg[1])
            except Exception as exc:  # a builder failure: it has already rolled back
                traceback.print_exc()
                _finish("error", f"Could not build the face: {exc}")
            else:
                _finish("done", "Done" + (f" ({note})" if note else ""))
        elif kind == "error":
            _finish("error", msg[1])
        else:
            _finish("cancelled", "Cancelled")
        return False


def _finish(state: str, message: str) -> None:
    _last.update(state=state, message=message)
    _set_ui(1.0 if state == "done" else 0.0,
            message if state != "error" else f"Error: {message}")
    if state == "error":
        print(f"HiFace: {message}")


def _reconstructor(req: Request, post):
    """The cached Reconstructor for these settings, built in the worker (loading is slow)."""
    from ..core.reconstruct import Reconstructor, ReconstructSettings

    key = (req.device, req.quality, req.landmark_backend, req.data_dir)
    with _cache_lock:
        if _cache["key"] == key:
            return _cache["reconstructor"]
    post(("progress", 0.01, "Loading the face models"))
    rec = Reconstructor(ReconstructSettings(device=req.device, quality=req.quality,
                                            landmark_backend=req.landmark_backend,
                                            data_dir=req.data_dir or None))
    with _cache_lock:
        old = _cache["reconstructor"]
        _cache.update(key=key, reconstructor=rec)
    if old is not None and hasattr(old, "close"):
        old.close()
    return rec


def _work(job: _Job) -> None:
    """Worker thread: no bpy here."""
    req, post = job.request, job.queue.put
    try:
        from ..core.errors import Cancelled, HiFaceError
    except Exception as exc:  # broken install: say so instead of dying silently
        post(("error", f"HiFace engine unavailable: {exc}"))
        return
    try:
        if job.cancel.is_set():
            raise Cancelled()
        notes: list[str] = []
        if req.rgb is None:
            from ..core.imageio import load_photo
            post(("progress", 0.0, "Reading the photo"))
            photo = load_photo(req.photo_path)
            rgb, notes = photo.rgb, list(photo.notes)
        else:
            rgb = req.rgb
        if job.cancel.is_set():
            raise Cancelled()
        rec = _reconstructor(req, post)
        if job.cancel.is_set():
            raise Cancelled()
        result = rec.run(rgb, progress=lambda f, m: post(("progress", float(f), str(m))),
                         cancel=job.cancel, source_path=req.source_label or req.photo_path,
                         notes=notes)
        post(("done", Payload(result=result, model=rec.model, rgb=rgb,
                              notes=list(result.report.get("notes", notes)))))
    except Cancelled:
        post(("cancelled",))
    except HiFaceError as exc:
        post(("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    except MemoryError:
        post(("error", "Out of memory: try a smaller photo or the CPU device"))
    except Exception as exc:
        traceback.print_exc()
        post(("error", f"Unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]))
