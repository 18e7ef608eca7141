"""Detail transfer between two real reconstructions (the astronaut and a GRID speaker)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hiface_blender.core.transfer import transfer_result
from hiface_testdata import read_grid_frames


@pytest.fixture(scope="module")
def pair(astronaut):
    from hiface_blender.core.reconstruct import ReconstructSettings, Reconstructor

    rec = Reconstructor(ReconstructSettings(device="cpu", detail=True))
    try:
        source = rec.run(astronaut, source_path="astronaut.png")
        target = rec.run(read_grid_frames("bbaf2n", frames=(0,))[0], source_path="bbaf2n.mpg")
    finally:
        rec.close()
    assert source.has_detail and target.has_detail
    return source, target


def test_target_keeps_its_person_and_takes_the_source_expression_and_wrinkles(pair):
    source, target = pair
    before = {k: np.array(getattr(target, k)) for k in (
        "identity", "neutral_vertices", "texture", "detail_static", "expression",
        "detail_compressed", "expression_tension")}
    out = transfer_result(source, target)
    for k in ("identity", "neutral_vertices", "texture", "texture_mask", "detail_static",
              "expression_tension", "rotation", "translation", "intrinsics"):
        np.testing.assert_array_equal(getattr(out, k), getattr(target, k), err_msg=k)
    np.testing.assert_array_equal(out.expression, source.expression)
    np.testing.assert_array_equal(out.detail_compressed, source.detail_compressed)
    np.testing.assert_array_equal(out.detail_stretched, source.detail_stretched)
    assert not np.array_equal(out.detail_compressed, target.detail_compressed)
    assert not np.array_equal(out.expression, target.expression)
    # The inputs are untouched.
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(target, k), v, err_msg=k)
    assert out.report["transfer"]["expression_and_dynamic_detail_from"] == "astronaut.png"


def test_round_trips_through_npz(pair, tmp_path):
    from hiface_blender.core.result import FaceResult

    out = transfer_result(*pair)
    out.save(tmp_path / "face.npz")
    back = FaceResult.load(tmp_path / "face.npz")
    np.testing.assert_array_equal(back.detail_compressed, out.detail_compressed)
    np.testing.assert_array_equal(back.expression, out.expression)


def test_other_map_size_is_resampled(pair):
    source, target = pair
    s = source.detail_compressed.shape[0]
    small = dataclasses.replace(source, detail_compressed=source.detail_compressed[::2, ::2].copy(),
                                detail_stretched=source.detail_stretched[::2, ::2].copy())
    out = transfer_result(small, target)
    assert out.detail_compressed.shape == out.detail_stretched.shape == target.detail_static.shape
    assert out.detail_compressed.dtype == np.float32
    # Resampled, not invented: close to the full-size original.
    corr = np.corrcoef(out.detail_compressed.ravel(), source.detail_compressed.ravel())[0, 1]
    assert s == target.detail_static.shape[0] and corr > 0.5


def test_bad_input_raises_and_changes_nothing(pair):
    source, target = pair
    no_detail = dataclasses.replace(target, detail_static=np.zeros((0, 0), np.float32))
    for a, b in ((no_detail, source), (source, no_detail)):
        with pytest.raises(ValueError, match="no detail"):
            transfer_result(a, b)
    uneven = dataclasses.replace(source, detail_stretched=source.detail_stretched[:, :-1])
    with pytest.raises(ValueError, match="square"):
        transfer_result(uneven, target)
    other = dataclasses.replace(source, exp_names=np.asarray(source.exp_names)[::-1])
    with pytest.raises(ValueError, match="expression names"):
        transfer_result(other, target)
