"""Where the tests find the real sample data (shared/ beside the checkout), and readers for it."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GRID_DIR = SHARED / "samples" / "grid"
GRID_CLIPS = ("bbaf2n", "brbk7n", "lbax4n", "lwbsza", "swiz3n")


def read_grid_frames(clip: str, frames=(0, 37)) -> list[np.ndarray]:
    """RGB uint8 frames of a GRID clip (360x288)."""
    from hiface_blender.core.video import frames_at

    path = GRID_DIR / f"{clip}.mpg"
    if not path.is_file():
        pytest.fail(f"GRID sample missing: {path}")
    got = frames_at(path, frames)
    return [got[i] for i in frames]


def write_video(path, frames, fps: float = 25.0, fourcc: str = "mp4v") -> None:
    """RGB uint8 frames written with OpenCV's own writer."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()


# The display matrix (16.16 fixed point; the last column 2.30) a phone writes into an MP4's
# track header for a clip shown turned clockwise by that many degrees (ISO/IEC 14496-12, tkhd).
_DISPLAY_MATRIX = {90: (0, 1, 0, -1, 0, 0), 180: (-1, 0, 0, 0, -1, 0), 270: (0, -1, 0, 1, 0, 0)}


def write_phone_clip(path, frames, degrees: int, fps: float = 25.0) -> None:
    """An MP4 as a phone stores it: each upright frame turned anticlockwise by `degrees` in the
    file, with the display matrix that turns it back for playback."""
    import struct

    turned = [np.ascontiguousarray(np.rot90(f, degrees // 90)) for f in frames]
    write_video(path, turned, fps)
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"tkhd")
    assert at > 0 and data.count(b"tkhd") == 1
    version = data[at + 4]
    # version/flags, times, track id, reserved, duration (32- or 64-bit), reserved, layer,
    # alternate group, volume, reserved: then the matrix.
    start = at + 4 + 4 + (20 if version == 0 else 32) + 8 + 8
    old = struct.unpack(">9i", data[start:start + 36])
    assert old == (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30), old
    a, b, u, c, d, v = _DISPLAY_MATRIX[degrees]
    data[start:start + 36] = struct.pack(">9i", a << 16, b << 16, u, c << 16, d << 16, v, 0, 0, 1 << 30)
    Path(path).write_bytes(bytes(data))


def write_variable_rate_clip(path, frames, times_s) -> None:
    """An MP4 whose frames are shown at `times_s` (increasing seconds from 0), as a phone
    records at a variable frame rate: written by OpenCV at a constant rate, then its
    sample-duration table (stts) rewritten with each frame's own duration. OpenCV's writer
    puts the movie header after the media data, so no chunk offset moves. The headers'
    total durations are left as written (players take the frames' times from the table)."""
    import struct

    write_video(path, frames, 25.0)
    data = bytearray(Path(path).read_bytes())
    mdhd = data.find(b"mdhd")
    assert mdhd > 0 and data[mdhd + 4] == 0          # version 0: 32-bit times
    timescale = struct.unpack(">I", data[mdhd + 16:mdhd + 20])[0]
    at = data.find(b"stts") - 4
    size = struct.unpack(">I", data[at:at + 4])[0]
    ticks = np.round(np.asarray(times_s, np.float64) * timescale).astype(np.int64)
    deltas = list(np.diff(ticks)) + [int(np.median(np.diff(ticks)))]
    assert min(deltas) > 0
    table = struct.pack(">I4sII", 16 + 8 * len(deltas), b"stts", 0, len(deltas))
    table += b"".join(struct.pack(">II", 1, int(d)) for d in deltas)
    assert data.find(b"moov") > data.find(b"mdat")
    data[at:at + size] = table
    grow = len(table) - size
    for box in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
        head = data.find(box) - 4
        assert 0 < head < at
        data[head:head + 4] = struct.pack(">I", struct.unpack(">I", data[head:head + 4])[0] + grow)
    # The edit list would cut playback at the constant-rate clip's length: made a free box.
    edts = data.find(b"edts")
    if edts > 0:
        data[edts:edts + 4] = b"free"
    Path(path).write_bytes(bytes(data))


# The first line of a Live Link Face export, as the app writes it (written out, not taken
# from the code under test).
LLF_FIRST_LINE = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,"
    "EyeLookUpLeft,EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,"
    "EyeLookOutRight,EyeLookUpRight,EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,"
    "JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,MouthLeft,MouthSmileLeft,"
    "MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    "MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,"
    "MouthUpperUpLeft,MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,"
    "BrowOuterUpRight,CheekPuff,CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,"
    "TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,"
    "RightEyePitch,RightEyeRoll")


def run_jobs(jobs, kind: str = "reconstruct", timeout: float = 600.0, on_progress=None):
    """Pump the job runner until it is idle (headless Blender fires no timers); the outcome
    of the last job of `kind`. `on_progress()` is called each pump until it returns true."""
    t0 = time.perf_counter()
    while jobs.pump():
        if on_progress is not None and on_progress():
            on_progress = None
        assert time.perf_counter() - t0 < timeout, "job did not finish"
        time.sleep(0.02)
    return jobs.last_outcome(kind)


def evaluated_vertices(obj) -> np.ndarray:
    """(V, 3) float32 object-space coordinates of the evaluated mesh (modifiers, shape keys)."""
    import bpy

    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    return co.reshape(-1, 3)

