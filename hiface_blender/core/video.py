"""Video frames with OpenCV: RGB uint8 frames with their source index, a frame range and a stride.

Containers and codecs are whatever the OpenCV build reads (FFmpeg: mp4, mov, avi, mpg, mkv...).
Frames are read in order and skipped ones are only grabbed, not converted: seeking is unreliable
in MPEG-1/2 and in files with sparse key frames, so a range is reached by reading up to it.
Frames come upright as a player shows them: a phone stores a portrait clip as landscape frames
with a rotation in the container, which is applied (the size reported is the upright one).
Each frame's presentation time is kept too: phones record at a variable frame rate (fewer
frames in low light), where frame number / fps drifts from the clip's sound.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import HiFaceError


@dataclass
class VideoInfo:
    path: str
    fps: float              # source frames per second (25.0 when the container does not say)
    frame_count: int        # as the container reports it; may be approximate, 0 if unknown
    width: int
    height: int
    fps_known: bool = True
    rotation: int = 0       # degrees the container asked for and the frames were turned by

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), the order of image arrays."""
        return self.height, self.width


DEFAULT_FPS = 25.0


class VideoReader:
    """Iterate `(source_index, rgb)` over frames start, start+stride, ... < end.

    `end` is exclusive; None reads to the last frame. Use as a context manager or call close().
    """

    def __init__(self, path, start: int = 0, end: int | None = None, stride: int = 1) -> None:
        import cv2

        self.path = Path(path)
        if start < 0:
            raise HiFaceError(f"start frame must be 0 or more, got {start}")
        if end is not None and end <= start:
            raise HiFaceError(f"end frame ({end}) must be after the start frame ({start})")
        if stride < 1:
            raise HiFaceError(f"stride must be at least 1, got {stride}")
        if not self.path.is_file():
            raise HiFaceError(f"video not found: {self.path}")
        self.start, self.end, self.stride = int(start), end, int(stride)
        # FFmpeg's own error lines ("moov atom not found") would print beside the message below;
        # fatal ones still do. Read by OpenCV when it first opens a video; the user's value wins.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise HiFaceError(f"cannot read {self.path.name}: not a video OpenCV can open")
        # Off by default in OpenCV: a portrait phone clip would reach the detector sideways.
        self._cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        rotation = int(round(self._cap.get(cv2.CAP_PROP_ORIENTATION_META) or 0)) % 360
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps_known = np.isfinite(fps) and 1.0 <= fps <= 1000.0
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        count = int(max(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0, 0))
        if w <= 0 or h <= 0:
            self._cap.release()
            raise HiFaceError(f"cannot read {self.path.name}: the video has no picture")
        self.info = VideoInfo(str(self.path), fps if fps_known else DEFAULT_FPS, count, w, h,
                              bool(fps_known), rotation)
        self._used = False
        self.last_time_s: float | None = None   # presentation time of the frame last yielded

    @property
    def expected_frames(self) -> int:
        """How many frames the range should yield, from the container's frame count (0 if
        unknown); for progress only: the real number is what the iterator yields."""
        n = self.info.frame_count
        if n <= 0:
            return 0
        stop = n if self.end is None else min(n, self.end)
        return max(0, (stop - self.start + self.stride - 1) // self.stride)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import cv2

        if self._used:
            raise RuntimeError("a VideoReader can be iterated once")
        self._used = True
        i = 0
        while self.end is None or i < self.end:
            wanted = i >= self.start and (i - self.start) % self.stride == 0
            if not wanted:
                if not self._cap.grab():
                    break
                i += 1
                continue
            ok, bgr = self._cap.read()
            if not ok or bgr is None:
                break
            ms = float(self._cap.get(cv2.CAP_PROP_POS_MSEC))
            self.last_time_s = ms / 1000.0 if np.isfinite(ms) and ms >= 0 else None
            if bgr.ndim == 2:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
            else:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield i, rgb
            i += 1

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_times(indices, times, fps: float) -> tuple[np.ndarray, bool]:
    """(F,) seconds of each frame from the container's presentation times, and whether they
    were usable (all known and increasing); else from the frame numbers at `fps`."""
    indices = np.asarray(indices, np.float64)
    t = np.array([np.nan if x is None else x for x in times], np.float64)
    if len(t) == len(indices) and np.isfinite(t).all() and (len(t) < 2 or (np.diff(t) > 0).all()):
        return t, True
    return indices / float(fps), False


def open_video(path, start: int = 0, end: int | None = None, stride: int = 1) -> VideoReader:
    return VideoReader(path, start, end, stride)


def read_frames(path, start: int = 0, end: int | None = None,
                stride: int = 1) -> tuple[VideoInfo, np.ndarray, list[np.ndarray]]:
    """All frames of the range at once: (info, source indices, RGB frames). HiFaceError when the
    range holds no frame (an empty video, or a start past its end)."""
    with VideoReader(path, start, end, stride) as reader:
        pairs = list(reader)
        info = reader.info
    if not pairs:
        raise HiFaceError(empty_message(Path(path), start, info))
    return info, np.array([p[0] for p in pairs], np.int32), [p[1] for p in pairs]


def frames_at(path, indices) -> dict[int, np.ndarray]:
    """RGB frames at the given source indices (decoding stops after the last one). HiFaceError
    when one of them is not in the video."""
    want = set(int(i) for i in indices)
    out: dict[int, np.ndarray] = {}
    with VideoReader(path, 0, max(want) + 1) as reader:
        for i, rgb in reader:
            if i in want:
                out[i] = rgb
    missing = sorted(want - set(out))
    if missing:
        raise HiFaceError(f"{Path(path).name}: frames {missing} could not be read")
    return out


def empty_message(path: Path, start: int, info: VideoInfo) -> str:
    if start > 0 and info.frame_count > 0 and start >= info.frame_count:
        return f"{path.name}: start frame {start} is past the end of the video ({info.frame_count} frames)"
    return f"cannot read {path.name}: no frames could be decoded"
