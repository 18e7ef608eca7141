"""MediaPipe landmarks on real photos and on bad input made from them."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from hiface_blender.core.errors import HiFaceError
from hiface_blender.core.imageio import load_photo
from hiface_blender.core.landmarks import (MP_SCORE_NAMES, MP_TO_ARKIT, LandmarkDetector,
                                           make_detector, scores_to_ict)
from hiface_testdata import GRID_CLIPS, REPO


@pytest.fixture(scope="module")
def detector(landmarker_path):
    det = LandmarkDetector(landmarker_path)
    yield det
    det.close()


@pytest.fixture(scope="module")
def astro_det(detector, astronaut):
    return detector.detect(astronaut)


def _haar_face(rgb):
    """An independent face box (OpenCV's Viola-Jones cascade), largest first."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    boxes = cascade.detectMultiScale(gray, 1.1, 5, minSize=(40, 40))
    assert len(boxes), "reference detector found no face"
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    return x, y, x + w, y + h


def _inside(p, box, margin=0.0):
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return (p[..., 0] >= x0 - mx) & (p[..., 0] <= x1 + mx) & (p[..., 1] >= y0 - my) & (p[..., 1] <= y1 + my)


def _mean_dist(a, b):
    return float(np.linalg.norm(a.points[:, :2] - b.points[:, :2], axis=1).mean())


def test_astronaut(astro_det, astronaut):
    d = astro_det
    assert d.kind == "mediapipe478" and d.points.shape == (478, 3) and d.points.dtype == np.float32
    assert d.n_faces == 1 and d.notes == [] and d.image_size == (512, 512)
    box = _haar_face(astronaut)
    # Nose tip, eye corners and mouth corners fall inside the independent face box.
    assert _inside(d.points[[1, 33, 133, 362, 263, 61, 291]], box).all()
    # Her right eye (33) is on the image left, left eye (263) on the right; eyes above mouth.
    assert d.points[33, 0] < d.points[263, 0]
    assert d.points[[33, 263], 1].max() < d.points[[61, 291], 1].min()
    assert 40 < d.interocular < 90
    # Blendshapes: MediaPipe's order, and she smiles.
    assert tuple(d.score_names) == MP_SCORE_NAMES and d.scores.shape == (52,)
    names = list(d.score_names)
    assert d.scores[names.index("mouthSmileLeft")] > 0.5
    assert d.scores[names.index("mouthSmileRight")] > 0.5
    assert d.scores[names.index("jawOpen")] < 0.5
    # Head matrix: a rotation plus a translation in front of the camera.
    r = d.matrix[:3, :3]
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-3) and d.matrix[2, 3] < 0


@pytest.mark.parametrize("clip", GRID_CLIPS)
def test_grid_frames(detector, grid_frames, clip):
    for frame in grid_frames[clip]:
        d = detector.detect(frame)
        assert d.n_faces == 1
        assert _inside(d.points[[1, 33, 263, 61, 291]], _haar_face(frame), margin=0.1).all()
        assert 40 < d.interocular < 120


def test_grid_frames_are_consistent_over_time(detector, grid_frames):
    # Two frames of one speaker sitting still: the eyes barely move.
    a, b = (detector.detect(f) for f in grid_frames["bbaf2n"])
    eyes = [33, 133, 362, 263]
    assert np.abs(a.points[eyes, :2] - b.points[eyes, :2]).max() < 0.25 * a.interocular


def test_exif_rotated_photo(detector, astronaut, astro_det, tmp_path):
    im = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, 1)))  # stored turned left
    exif = im.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    im.save(p, quality=95, exif=exif)
    d = detector.detect(load_photo(p).rgb)
    assert _mean_dist(d, astro_det) < 2.0


def test_16bit_grayscale_and_rgba_photos(detector, astronaut, astro_det, tmp_path):
    g16 = (cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    p = tmp_path / "g16.png"
    Image.fromarray(g16).save(p)
    d = detector.detect(load_photo(p).rgb)
    assert _mean_dist(d, astro_det) < 3.0
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, 400:, 3] = 0                          # transparent strip away from the face
    p = tmp_path / "a.png"
    Image.fromarray(rgba).save(p)
    d = detector.detect(load_photo(p).rgb)
    assert _mean_dist(d, astro_det) < 2.0


def test_two_faces_uses_largest(detector, astronaut, grid_frames):
    canvas = np.full((600, 1000, 3), 200, np.uint8)
    canvas[44:556, 420:932] = astronaut                       # face about 90 px wide
    small = cv2.resize(grid_frames["swiz3n"][0], (216, 173), interpolation=cv2.INTER_AREA)
    canvas[50:223, 40:256] = small                            # face about 65 px wide
    d = detector.detect(canvas)
    assert d.n_faces == 2
    assert "2 faces found, using the largest" in d.notes
    assert _inside(d.points[[1]], (420, 44, 932, 556)).all()


def test_a_face_too_small_for_the_whole_image_pass_is_counted(detector, astronaut, astro_det):
    from hiface_blender.core.landmarks import _run_mp

    canvas = np.zeros((512, 768, 3), np.uint8)
    canvas[:, :512] = astronaut                                # face about 100 px wide
    canvas[:256, 512:] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    assert len(_run_mp(detector._mp, canvas, 0, 0)) == 1       # the small one is missed there
    d = detector.detect(canvas)
    assert d.n_faces == 2
    assert d.notes == ["2 faces found, using the largest"]
    # The largest face keeps the landmarks of the whole-image pass.
    assert _mean_dist(d, astro_det) < 2.0


def test_blank_and_noise_have_no_face(detector):
    for img in (np.full((512, 512, 3), 255, np.uint8),
                np.random.default_rng(1).integers(0, 256, (700, 900, 3), dtype=np.uint8)):
        with pytest.raises(HiFaceError, match="No face found in the photo"):
            detector.detect(img)


def test_small_face_in_large_photo(detector, astronaut):
    big = np.full((2400, 3000, 3), 128, np.uint8)
    big[1300:1900, 400:1000] = cv2.resize(astronaut, (600, 600), interpolation=cv2.INTER_AREA)
    d = detector.detect(big)
    assert any("tiles" in n for n in d.notes)
    ref = detector.detect(astronaut)
    expect = ref.points[:, :2] * (600 / 512) + [400, 1300]
    # Within 2% of the inter-ocular distance on average, at the scale of the small face.
    assert np.linalg.norm(d.points[:, :2] - expect, axis=1).mean() < 0.03 * d.interocular


def test_huge_photo_end_to_end(detector, astronaut, astro_det, tmp_path):
    p = tmp_path / "huge.jpg"
    Image.fromarray(astronaut).resize((9000, 9000), Image.Resampling.BICUBIC).save(p, quality=85)
    photo = load_photo(p)
    assert photo.rgb.shape == (4096, 4096, 3)
    d = detector.detect(photo.rgb)
    s = 4096 / 512
    err = np.linalg.norm(d.points[:, :2] / s - astro_det.points[:, :2], axis=1).mean()
    assert err < 2.0


def test_bad_arrays(detector):
    with pytest.raises(HiFaceError):
        detector.detect(np.zeros((100, 100), np.uint8))
    with pytest.raises(HiFaceError):
        detector.detect(np.zeros((100, 100, 3), np.float32))


def test_close_is_safe(landmarker_path, astronaut):
    det = LandmarkDetector(landmarker_path)
    det.detect(astronaut)
    det.close()
    det.close()
    with pytest.raises(HiFaceError, match="closed"):
        det.detect(astronaut)


def test_no_noise_at_interpreter_exit(landmarker_path):
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from hiface_blender.core.landmarks import LandmarkDetector
        det = LandmarkDetector({str(landmarker_path)!r})
        try:
            det.detect(np.zeros((256, 256, 3), np.uint8))
        except Exception as e:
            print(type(e).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "HiFaceError" in r.stdout
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr


def test_one_detector_shared_by_threads(detector, astronaut, astro_det):
    out = [None] * 4

    def work(i):
        out[i] = detector.detect(astronaut)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in out:
        assert np.allclose(d.points, astro_det.points, atol=1e-3)


def test_missing_task_file(tmp_path):
    with pytest.raises(HiFaceError, match="not found"):
        LandmarkDetector(tmp_path / "face_landmarker.task")


def test_face_alignment_backend_or_plain_fallback(landmarker_path, astronaut):
    notes: list[str] = []
    det = make_detector(landmarker_path, "face-alignment", notes=notes)
    try:
        if importlib.util.find_spec("face_alignment") is None:
            with pytest.raises(HiFaceError, match="not installed.*MediaPipe"):
                LandmarkDetector(landmarker_path, "face-alignment")
            assert det.kind == "mediapipe478"
            assert len(notes) == 1 and "MediaPipe instead" in notes[0]
        elif det.kind == "mediapipe478":            # installed, weights not obtainable
            assert len(notes) == 1 and "weights" in notes[0]
        else:
            d = det.detect(astronaut)
            assert d.kind == "fa68" and d.points.shape == (68, 3)
            assert d.points[36, 0] < d.points[45, 0]
        assert det.detect(astronaut).n_faces == 1
    finally:
        det.close()


def test_unknown_backend(landmarker_path):
    with pytest.raises(HiFaceError, match="Unknown landmark backend"):
        LandmarkDetector(landmarker_path, "dlib")


def test_scores_to_ict(astro_det, face_model_data):
    exp_names = [str(n) for n in face_model_data.exp_names]
    # Every MediaPipe score lands on an ICT shape.
    assert all(n in exp_names for names in MP_TO_ARKIT.values() for n in names)
    assert len(MP_TO_ARKIT) == 51
    w = scores_to_ict(astro_det.scores, astro_det.score_names, exp_names)
    assert w.shape == (len(exp_names),) and w.dtype == np.float32
    s = dict(zip(astro_det.score_names, astro_det.scores))
    e = dict(zip(exp_names, w))
    assert e["mouthSmile_L"] == pytest.approx(s["mouthSmileLeft"])
    assert e["mouthSmile_R"] == pytest.approx(s["mouthSmileRight"])
    assert e["browInnerUp_L"] == e["browInnerUp_R"] == pytest.approx(s["browInnerUp"])
    assert e["cheekPuff_L"] == e["cheekPuff_R"] == pytest.approx(s["cheekPuff"])
    assert e["jawOpen"] == pytest.approx(s["jawOpen"])
    # 53 ICT shapes: 51 MediaPipe scores, two of them split in halves.
    assert np.count_nonzero([any(n in v for v in MP_TO_ARKIT.values()) for n in exp_names]) == 53
