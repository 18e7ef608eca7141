"""Background jobs: reconstruction, and other kinds (video retargeting) on the same runner.

Contract: the worker thread never touches bpy. Its inputs are plain values copied on the main
thread; it posts ("progress", fraction, text), ("done", payload), ("error", text) or
("cancelled",) to a queue. `pump()` drains the queues on the main thread: it is called by a
`bpy.app.timers` callback in the UI and directly by headless code (timers do not fire there),
and it alone applies results to Blender data. One job at a time per kind; calls without a
`kind` mean the reconstruction.
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
OUT_OF_MEMORY = ("Out of memory: try smaller Detail Maps (add-on preferences), a smaller photo "
                 "or the other device")


@dataclass(frozen=True)
class Request:
    """Everything the worker needs, as plain values."""
    device: str = "auto"
    quality: str = "standard"
    landmark_backend: str = "mediapipe"
    data_dir: str = ""
    detail_size: int = 1024
    fill_neck_clothing: bool = True
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


RECONSTRUCT = "reconstruct"


@dataclass(frozen=True)
class Kind:
    """How a kind of job shows itself: the window-manager properties its progress goes to, and
    how a failure of its main-thread step is worded."""
    name: str
    progress_prop: str = "hiface_progress"
    status_prop: str = "hiface_status"
    failure: str = "Could not build the face"


_KINDS: dict[str, Kind] = {RECONSTRUCT: Kind(RECONSTRUCT)}


@dataclass
class _Job:
    request: Any
    on_done: Callable[[Any], str | None]
    kind: Kind = _KINDS[RECONSTRUCT]
    # (request, post, cancel) -> payload, run on the worker thread
    work: Callable[[Any, Callable, threading.Event], Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    queue: "queue.Queue[tuple]" = field(default_factory=queue.Queue)
    thread: threading.Thread | None = None


_jobs: dict[str, _Job] = {}
_last: dict[str, dict] = {}
_cache_lock = threading.Lock()
_cache: dict = {"key": None, "reconstructor": None}


def register_kind(kind: Kind) -> None:
    _KINDS[kind.name] = kind


def get_kind(kind: str = RECONSTRUCT) -> Kind:
    return _KINDS[kind]


def is_running(kind: str = RECONSTRUCT) -> bool:
    return kind in _jobs


def last_outcome(kind: str = RECONSTRUCT) -> tuple[str, str]:
    """(state, message) of the last job of a kind: idle, running, done, error or cancelled."""
    last = _last.get(kind, {})
    return last.get("state", "idle"), last.get("message", "")


def _set_ui(kind: Kind, progress: float | None = None, status: str | None = None) -> None:
    wm = bpy.context.window_manager
    if wm is None or not hasattr(wm, kind.progress_prop):
        return
    if progress is not None:
        setattr(wm, kind.progress_prop, max(0.0, min(1.0, progress)))
    if status is not None:
        setattr(wm, kind.status_prop, status)
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "STATUSBAR"}:
                area.tag_redraw()


def start(request, on_done: Callable[[Any], str | None], *, kind: str = RECONSTRUCT,
          work: Callable[[Any, Callable, threading.Event], Any] | None = None) -> None:
    """Start a job (main thread). `work(request, post, cancel)` runs on the worker thread and
    returns the payload (default: a reconstruction of a `Request`); `on_done(payload)` runs on
    the main thread from `pump` and returns an optional note for the status line. Raises
    RuntimeError if a job of this kind is running."""
    if kind in _jobs:
        raise RuntimeError("A HiFace reconstruction is already running" if kind == RECONSTRUCT
                           else f"A HiFace {kind} job is already running")
    job = _Job(request=request, on_done=on_done, kind=_KINDS[kind], work=work or _reconstruct)
    job.thread = threading.Thread(target=_work, args=(job,), name=f"HiFace {kind}", daemon=True)
    _jobs[kind] = job
    _last[kind] = {"state": "running", "message": ""}
    _set_ui(job.kind, 0.0, "Starting")
    job.thread.start()
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=_TICK)


def cancel(kind: str = RECONSTRUCT) -> None:
    """Ask the running job to stop; its result, if any, is discarded."""
    job = _jobs.get(kind)
    if job is not None:
        job.cancel.set()
        _set_ui(job.kind, status="Cancelling")


def stop() -> None:
    """Abandon every job at once and remove the timer (unregister, file load). The worker
    threads end at their next cancel check; nothing they produce is applied."""
    for kind, job in list(_jobs.items()):
        job.cancel.set()
        del _jobs[kind]
        _last[kind] = {"state": "cancelled", "message": "Cancelled"}
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
    """Drain the queues on the main thread; returns True while a job still runs."""
    for job in list(_jobs.values()):
        _drain(job)
    return bool(_jobs)


def _drain(job: _Job) -> None:
    while _jobs.get(job.kind.name) is job:
        try:
            msg = job.queue.get_nowait()
        except queue.Empty:
            return
        kind = msg[0]
        if kind == "progress":
            if not job.cancel.is_set():
                _set_ui(job.kind, msg[1], msg[2])
            continue
        del _jobs[job.kind.name]
        if job.cancel.is_set():  # whatever arrives after a cancel request is dropped
            kind = "cancelled"
        if kind == "done":
            try:
                note = job.on_done(msg[1])
            except Exception as exc:  # a builder failure: it has already rolled back
                traceback.print_exc()
                _finish(job.kind, "error", f"{job.kind.failure}: {exc}")
            else:
                _finish(job.kind, "done", "Done" + (f" ({note})" if note else ""))
        elif kind == "error":
            _finish(job.kind, "error", msg[1])
        else:
            _finish(job.kind, "cancelled", "Cancelled")


def _finish(kind: Kind, state: str, message: str) -> None:
    _last[kind.name] = {"state": state, "message": message}
    _set_ui(kind, 1.0 if state == "done" else 0.0,
            message if state != "error" else f"Error: {message}")
    if state == "error":
        print(f"HiFace: {message}")


def reconstructor(req, post):
    """The cached Reconstructor for these settings, built in a worker (loading is slow); every
    kind of job shares it: the face model and the device are loaded once."""
    from ..core.reconstruct import Reconstructor, ReconstructSettings

    key = (req.device, req.quality, req.landmark_backend, req.data_dir, req.detail_size,
           req.fill_neck_clothing)
    with _cache_lock:
        if _cache["key"] == key:
            return _cache["reconstructor"]
    post(("progress", 0.01, "Loading the face models"))
    rec = Reconstructor(ReconstructSettings(device=req.device, quality=req.quality,
                                            landmark_backend=req.landmark_backend,
                                            data_dir=req.data_dir or None,
                                            detail_size=req.detail_size,
                                            fill_neck_clothing=req.fill_neck_clothing))
    with _cache_lock:
        old = _cache["reconstructor"]
        _cache.update(key=key, reconstructor=rec)
    if old is not None and hasattr(old, "close"):
        old.close()
    return rec


def _reconstruct(req: Request, post, cancel: threading.Event) -> Payload:
    from ..core.errors import Cancelled

    if cancel.is_set():
        raise Cancelled()
    notes: list[str] = []
    if req.rgb is None:
        from ..core.imageio import load_photo
        post(("progress", 0.0, "Reading the photo"))
        photo = load_photo(req.photo_path)
        rgb, notes = photo.rgb, list(photo.notes)
    else:
        rgb = req.rgb
    if cancel.is_set():
        raise Cancelled()
    rec = reconstructor(req, post)
    if cancel.is_set():
        raise Cancelled()
    result = rec.run(rgb, progress=lambda f, m: post(("progress", float(f), str(m))),
                     cancel=cancel, source_path=req.source_label or req.photo_path,
                     notes=notes)
    return Payload(result=result, model=rec.model, rgb=rgb,
                   notes=list(result.report.get("notes", notes)))


def _work(job: _Job) -> None:
    """Worker thread: no bpy here."""
    post = job.queue.put
    try:
        from ..core.errors import Cancelled, HiFaceError, is_out_of_memory
    except Exception as exc:  # broken install: say so instead of dying silently
        post(("error", f"HiFace engine unavailable: {exc}"))
        return
    try:
        if job.cancel.is_set():
            raise Cancelled()
        post(("done", job.work(job.request, post, job.cancel)))
    except Cancelled:
        post(("cancelled",))
    except HiFaceError as exc:
        post(("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    except Exception as exc:
        if is_out_of_memory(exc):
            post(("error", OUT_OF_MEMORY))
            return
        traceback.print_exc()
        post(("error", f"Unexpected error: {type(exc).__name__}: {exc}".splitlines()[0]))
