"""ARKit name matching and Live Link Face CSV reading (no Blender)."""
from __future__ import annotations

import numpy as np
import pytest

from hiface_blender.core.arkit_csv import (ARKIT_NAMES, LLF_HEADER, canonical, infer_timecode_rate,
                                           is_arkit_name, match_channels, parse_timecode,
                                           read_live_link_csv, write_live_link_csv)
from hiface_blender.core.errors import HiFaceError
from hiface_blender.core.landmarks import MP_TO_ARKIT
from hiface_testdata import LLF_FIRST_LINE

ICT_NAMES = sorted({n for v in MP_TO_ARKIT.values() for n in v})


def test_header_constant_is_live_link_face():
    assert ",".join(LLF_HEADER) == LLF_FIRST_LINE
    assert len(ARKIT_NAMES) == 52 and len(set(map(canonical, ARKIT_NAMES))) == 52


@pytest.mark.parametrize("spelling", ["mouthSmileLeft", "MouthSmileLeft", "mouthSmile_L",
                                      "MOUTHSMILE_L", "mouthSmile.L", "mouthSmile_Left",
                                      "blendShape1.mouthSmileLeft", "face:mouthSmile_L",
                                      "mouthSmile_L.001"])
def test_spellings_of_one_shape(spelling):
    assert canonical(spelling) == "mouthsmile_l"


def test_directions_and_names_ending_in_l_or_r_are_not_sides():
    assert canonical("jawLeft") == "jawleft" and canonical("MouthRight") == "mouthright"
    assert canonical("mouthRollUpper") == "mouthrollupper"
    assert canonical("mouthFunnel") == "mouthfunnel"
    assert canonical("mouthPucker") == "mouthpucker"
    assert not is_arkit_name("Basis") and not is_arkit_name("Key 1")
    assert not is_arkit_name("smile")


def test_every_ict_name_is_an_arkit_shape():
    assert all(is_arkit_name(n) for n in ICT_NAMES) and len(ICT_NAMES) == 53


def test_match_single_arkit_keys_average_ict_halves():
    m = match_channels(ARKIT_NAMES, ICT_NAMES)
    assert set(ARKIT_NAMES) - set(m) == {"tongueOut"}       # a video has no tongue
    idx = {n: i for i, n in enumerate(ICT_NAMES)}
    assert m["browInnerUp"] == (idx["browInnerUp_L"], idx["browInnerUp_R"])
    assert m["cheekPuff"] == (idx["cheekPuff_L"], idx["cheekPuff_R"])
    assert m["mouthSmileLeft"] == (idx["mouthSmile_L"],)
    assert m["jawLeft"] == (idx["jawLeft"],) and m["mouthRight"] == (idx["mouthRight"],)


def test_match_ict_halves_from_single_arkit_channel():
    m = match_channels(ICT_NAMES, ARKIT_NAMES)
    assert len(m) == 53
    assert m["browInnerUp_L"] == m["browInnerUp_R"] == (ARKIT_NAMES.index("browInnerUp"),)
    assert m["eyeBlink_R"] == (ARKIT_NAMES.index("eyeBlinkRight"),)


def test_timecode():
    assert parse_timecode("14:03:52:28.207") == (14 * 3600 + 3 * 60 + 52, 28.207)
    assert parse_timecode("00:00:01:05") == (1, 5.0)
    with pytest.raises(ValueError):
        parse_timecode("yesterday")


def test_timecode_rate_inference():
    secs = np.array([0, 0, 1, 1])
    assert infer_timecode_rate(secs, np.array([58.0, 59.5, 0.4, 1.4])) == 60.0
    assert infer_timecode_rate(secs, np.array([28.0, 29.0, 0.0, 1.0])) == 30.0
    assert infer_timecode_rate(secs, np.array([23.0, 23.5, 0.0, 1.0])) == 24.0
    # Shorter than a second: Live Link Face's default.
    assert infer_timecode_rate(np.array([0, 0]), np.array([3.0, 10.0])) == 60.0


def _sample_csv(path, rows, header=LLF_FIRST_LINE):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _row(tc, jaw=0.0, blink_l=0.0, n=61):
    values = ["0.0"] * n
    values[LLF_HEADER.index("JawOpen") - 2] = f"{jaw}"
    values[LLF_HEADER.index("EyeBlinkLeft") - 2] = f"{blink_l}"
    return ",".join([tc, "61", *values])


def test_read_good_file(tmp_path):
    rows = [_row(f"14:03:52:{58 + i:02d}.000" if i < 2 else f"14:03:53:{i - 2:02d}.000",
                 jaw=0.1 * i, blink_l=1.0 if i == 2 else 0.0) for i in range(6)]
    take = read_live_link_csv(_sample_csv(tmp_path / "take.csv", rows))
    assert take.timecode_rate == 60.0
    np.testing.assert_allclose(take.times, np.arange(6) / 60.0, atol=1e-9)
    assert len(take.names) == 52 and take.unknown == []
    assert take.pose_columns[:3] == ["HeadYaw", "HeadPitch", "HeadRoll"]
    jaw = take.values[:, take.names.index("JawOpen")]
    np.testing.assert_allclose(jaw, 0.1 * np.arange(6), atol=1e-6)
    assert take.values[2, take.names.index("EyeBlinkLeft")] == 1.0


def test_subframes_and_repeated_timecodes(tmp_path):
    rows = [_row("00:00:00:01.500", jaw=0.1), _row("00:00:00:02.250", jaw=0.2),
            _row("00:00:00:02.250", jaw=0.3), _row("00:00:00:04.000", jaw=0.4)]
    take = read_live_link_csv(_sample_csv(tmp_path / "t.csv", rows), timecode_rate=60)
    np.testing.assert_allclose(take.times, np.array([0.0, 0.75, 2.5]) / 60.0)
    # The last of two rows with one timecode wins.
    np.testing.assert_allclose(take.values[:, take.names.index("JawOpen")], [0.1, 0.3, 0.4],
                               atol=1e-6)


def test_unknown_columns_are_listed(tmp_path):
    header = LLF_FIRST_LINE + ",Mood,Gaze_X"
    rows = [_row("00:00:00:00.000") + ",0.5,1.0", _row("00:00:00:01.000") + ",0.5,1.0"]
    take = read_live_link_csv(_sample_csv(tmp_path / "t.csv", rows, header))
    assert take.unknown == ["Mood", "Gaze_X"] and len(take.names) == 52


def test_no_known_column_is_an_error(tmp_path):
    path = _sample_csv(tmp_path / "t.csv", ["00:00:00:00.000,1,2", "00:00:00:01.000,1,2"],
                       "Timecode,Mood,Gaze_X")
    with pytest.raises(HiFaceError, match=r"no ARKit blendshape columns.*Mood, Gaze_X"):
        read_live_link_csv(path)


@pytest.mark.parametrize("content, match", [
    ("", "is empty"),
    ("Frame,JawOpen\n1,0.5\n", "no Timecode column"),
    (LLF_FIRST_LINE + "\n", "no rows"),
    (LLF_FIRST_LINE + "\n" + _row("noon") + "\n", "line 2: bad timecode"),
    (LLF_FIRST_LINE + "\n" + _row("00:00:01:00.000") + "\n" + _row("00:00:00:10.000") + "\n",
     "line 3: timecode goes backwards"),
    (LLF_FIRST_LINE + "\n" + _row("00:00:00:00.000").replace(",0.0,", ",high,", 1) + "\n",
     "EyeBlinkLeft is not a number"),
    (LLF_FIRST_LINE + "\n00:00:00:00.000,61,0.5\n", "line 2: 3 values"),
])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(HiFaceError, match=match):
        read_live_link_csv(path)


def test_missing_file(tmp_path):
    with pytest.raises(HiFaceError, match="Cannot read"):
        read_live_link_csv(tmp_path / "none.csv")


def test_across_midnight(tmp_path):
    rows = [_row("23:59:59:59.000"), _row("00:00:00:00.000"), _row("00:00:00:01.000")]
    take = read_live_link_csv(_sample_csv(tmp_path / "t.csv", rows), timecode_rate=60)
    np.testing.assert_allclose(take.times, np.arange(3) / 60.0, atol=1e-6)


def test_write_read_round_trip(tmp_path):
    t = np.arange(130) / 60.0
    v = np.stack([0.5 + 0.5 * np.sin(t * 5), np.linspace(0, 1, len(t))], 1)
    path = tmp_path / "rt.csv"
    write_live_link_csv(path, t, ["jawOpen", "mouthSmile_L"], v, start_seconds=3600 + 0.5)
    assert path.read_text().splitlines()[0] == LLF_FIRST_LINE
    take = read_live_link_csv(path)
    assert take.timecode_rate == 60.0
    np.testing.assert_allclose(take.times, t, atol=1e-6)
    np.testing.assert_allclose(take.values[:, take.names.index("JawOpen")], v[:, 0], atol=1e-6)
    np.testing.assert_allclose(take.values[:, take.names.index("MouthSmileLeft")], v[:, 1],
                               atol=1e-6)
