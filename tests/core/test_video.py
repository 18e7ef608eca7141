"""Video reading: real GRID clips and small clips written here with OpenCV."""
from __future__ import annotations

import numpy as np
import pytest

from hiface_testdata import (GRID_DIR, read_grid_frames, write_phone_clip,
                             write_variable_rate_clip, write_video)


def test_grid_clip_all_frames():
    from hiface_blender.core.video import read_frames

    info, idx, frames = read_frames(GRID_DIR / "bbaf2n.mpg")
    assert (info.fps, info.width, info.height, info.frame_count) == (25.0, 360, 288, 75)
    assert info.size == (288, 360)
    assert idx.tolist() == list(range(75)) and len(frames) == 75
    assert frames[0].dtype == np.uint8 and frames[0].shape == (288, 360, 3)
    # Same pixels, in RGB order, as the reference reader.
    ref = read_grid_frames("bbaf2n", frames=(0, 37))
    assert np.array_equal(frames[0], ref[0]) and np.array_equal(frames[37], ref[1])


def test_range_and_stride():
    from hiface_blender.core.video import VideoReader, read_frames

    _, idx, frames = read_frames(GRID_DIR / "lbax4n.mpg", start=10, end=31, stride=5)
    assert idx.tolist() == [10, 15, 20, 25, 30]
    ref = read_grid_frames("lbax4n", frames=(25,))[0]
    assert np.array_equal(frames[3], ref)
    with VideoReader(GRID_DIR / "lbax4n.mpg", start=70, stride=2) as r:
        assert r.expected_frames == 3
        assert [i for i, _ in r] == [70, 72, 74]


@pytest.mark.parametrize("suffix,fourcc", [(".mp4", "mp4v"), (".avi", "MJPG"), (".mov", "mp4v")])
def test_containers_and_colour_order(tmp_path, suffix, fourcc):
    from hiface_blender.core.video import read_frames

    red = np.zeros((64, 96, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros_like(red)
    blue[..., 2] = 220
    path = tmp_path / f"clip{suffix}"
    write_video(path, [red] * 3 + [blue] * 3, fps=30.0, fourcc=fourcc)
    info, idx, frames = read_frames(path)
    assert info.fps == pytest.approx(30.0) and (info.width, info.height) == (96, 64)
    assert len(frames) == 6
    m0, m5 = frames[0].reshape(-1, 3).mean(0), frames[5].reshape(-1, 3).mean(0)
    assert m0[0] > 180 and m0[2] < 40        # red stays red: RGB, not BGR
    assert m5[2] > 180 and m5[0] < 40


@pytest.mark.parametrize("content", [b"", b"GIF89a not really a video" * 20])
def test_unreadable_or_empty(tmp_path, content):
    from hiface_blender.core.errors import HiFaceError
    from hiface_blender.core.video import read_frames

    path = tmp_path / "clip.mp4"
    path.write_bytes(content)
    with pytest.raises(HiFaceError, match="^cannot read clip.mp4"):
        read_frames(path)


def test_bad_arguments(tmp_path):
    from hiface_blender.core.errors import HiFaceError
    from hiface_blender.core.video import VideoReader, read_frames

    clip = GRID_DIR / "bbaf2n.mpg"
    with pytest.raises(HiFaceError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")
    with pytest.raises(HiFaceError, match="stride"):
        VideoReader(clip, stride=0)
    with pytest.raises(HiFaceError, match="end frame"):
        VideoReader(clip, start=20, end=10)
    with pytest.raises(HiFaceError, match="past the end of the video"):
        read_frames(clip, start=500)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_phone_rotation_is_applied(tmp_path, degrees):
    """A clip stored turned, with the container's display rotation (a portrait phone clip), is
    read upright: the same frames as the upright clip written the same way, at its size."""
    from hiface_blender.core.video import read_frames

    frames = read_grid_frames("bbaf2n", frames=(0, 20, 40))
    write_video(tmp_path / "upright.mp4", frames)
    write_phone_clip(tmp_path / "phone.mp4", frames, degrees)
    ref_info, _, ref = read_frames(tmp_path / "upright.mp4")
    info, _, got = read_frames(tmp_path / "phone.mp4")
    assert (ref_info.rotation, info.rotation) == (0, degrees)
    assert info.size == ref_info.size == (288, 360)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        err = np.abs(a.astype(float) - b).mean()
        # The two files differ only by their encoder's loss; a wrong turn would be 20+ levels.
        assert err < 4.0, err
        assert np.abs(a.astype(float) - np.rot90(b, 2)).mean() > 5 * err


def test_frame_times_follow_a_variable_frame_rate(tmp_path):
    """A phone's variable frame rate: each frame keeps its own presentation time (frame number /
    fps would drift); a constant-rate clip gives frame number / fps; unusable times fall back."""
    from hiface_blender.core.video import VideoReader, frame_times

    frames = read_grid_frames("bbaf2n", frames=tuple(range(0, 40, 2)))
    # 30 frames/s, then 12 (low light), then 30 again.
    times = np.concatenate([np.arange(8) / 30.0, 8 / 30.0 + np.arange(1, 7) / 12.0])
    times = np.concatenate([times, times[-1] + np.arange(1, 7) / 30.0])
    path = tmp_path / "vfr.mp4"
    write_variable_rate_clip(path, frames, times)
    with VideoReader(path, stride=3) as reader:
        got = [(i, reader.last_time_s) for i, _ in reader]
    assert [i for i, _ in got] == list(range(0, 20, 3))
    assert np.allclose([t for _, t in got], times[::3], atol=1e-3)
    t, timed = frame_times(*zip(*got), reader.info.fps)
    assert timed and np.allclose(t, times[::3], atol=1e-3)
    with VideoReader(GRID_DIR / "bbaf2n.mpg", start=10, end=20) as reader:
        idx, got = zip(*[(i, reader.last_time_s) for i, _ in reader])
    assert np.allclose(got, np.arange(10, 20) / 25.0)
    t, timed = frame_times([3, 4, 5], [0.1, None, 0.3], 25.0)
    assert not timed and np.allclose(t, [0.12, 0.16, 0.2])
    assert not frame_times([3, 4], [0.2, 0.1], 25.0)[1]
