"""Real photos: the fitted model reprojects onto the detected landmarks within 2 % of the
inter-ocular distance (mean over the 478 points), on the astronaut and on frames of each GRID
clip (five speakers, one with glasses, one older with wrinkles)."""
from __future__ import annotations

import pytest

from hiface_blender import evaluate
from hiface_testdata import read_grid_frames

TARGET_IOD = 0.02


def _check(rec, rgb):
    res = rec.run(rgb)
    ours = evaluate.reprojection(res.landmarks_detected, res.landmarks_fitted)
    # The pipeline's own report must say the same as the independent computation.
    assert res.report["fit"]["reprojection_iod_mean"] == pytest.approx(ours["iod"], rel=0.02)
    assert ours["iod"] <= TARGET_IOD, ours
    return ours


def test_astronaut(reconstructor, astronaut):
    _check(reconstructor, astronaut)


@pytest.mark.parametrize("clip", evaluate.GRID_CLIPS)
def test_grid_clip(reconstructor, clip):
    for rgb in read_grid_frames(clip, (0, 50)):
        assert rgb.shape == (288, 360, 3)
        _check(reconstructor, rgb)
