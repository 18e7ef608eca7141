"""The command line, run as a user runs it: `python -m hiface_blender ...` in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
N_VERTICES = 26719


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "hiface_blender", *map(str, args)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reconstruction(astronaut_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "astronaut"
    proc = cli("reconstruct", astronaut_png, "-o", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def read_obj(path: Path):
    v, vt, faces, usemtl = [], 0, [], 0
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                v.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("vt "):
                vt += 1
            elif line.startswith("f "):
                faces.append([tuple(int(i) for i in c.split("/")) for c in line.split()[1:]])
            elif line.startswith("usemtl "):
                usemtl += 1
    return np.array(v), vt, faces, usemtl


def test_reconstruct_writes_the_core_files(reconstruction):
    out, proc = reconstruction
    assert sorted(p.name for p in out.iterdir()) == [
        "detail_compressed.png", "detail_static.png", "detail_stretched.png", "face.npz",
        "face_camera.obj", "report.json"]
    assert "Traceback" not in proc.stderr
    assert "%]" in proc.stderr  # progress lines go to stderr
    assert proc.stdout == ""


def test_obj_is_the_posed_model_in_camera_space(reconstruction):
    from hiface_blender import paths
    from hiface_blender.core.model_data import FaceModelData
    from hiface_blender.core.result import FaceResult

    out, _ = reconstruction
    v, n_uv, faces, usemtl = read_obj(out / "face_camera.obj")
    model = FaceModelData.load(paths.face_model_path())
    result = FaceResult.load(out / "face.npz")

    assert v.shape == (N_VERTICES, 3)
    assert n_uv == len(model.uvs)
    assert len(faces) == len(model.poly_start)
    assert usemtl >= 1
    first = model.poly_start[0], model.poly_size[0]
    assert [c[0] - 1 for c in faces[0]] == model.loop_vert[first[0]:first[0] + first[1]].tolist()
    assert max(c[0] for f in faces for c in f) == N_VERTICES
    assert max(c[1] for f in faces for c in f) <= n_uv

    # In front of the camera, at a plausible distance (mm), and a head of plausible size.
    face = v[:6706]
    assert (face[:, 2] > 100).all() and np.median(face[:, 2]) < 5000
    width = np.ptp(face[:, 0])
    assert 80 < width < 250, width
    # Projected with the intrinsics, the face lands on the detected landmarks.
    p = face @ result.intrinsics.T.astype(np.float64)
    uv = p[:, :2] / p[:, 2:]
    lm = result.landmarks_detected
    lo, hi = lm.min(0) - 20, lm.max(0) + 20
    inside = ((uv >= lo) & (uv <= hi)).all(1).mean()
    assert inside > 0.9, inside
    np.testing.assert_allclose(uv.mean(0), lm.mean(0), atol=0.1 * np.ptp(lm[:, 0]))


def test_report_has_timings_memory_camera_and_errors(reconstruction):
    out, _ = reconstruction
    report = json.loads((out / "report.json").read_text())
    assert report["device"] == "cpu"
    assert report["image_size"] == {"width": 512, "height": 512}
    secs = report["seconds"]
    for key in ("load_photo", "load_models", "engine_detect", "engine_fit", "engine_texture",
                "write", "command_total"):
        assert secs[key] >= 0, key
    assert report["peak_memory_mb"]["rss_mb"] > 100
    k = report["intrinsics"]
    assert k["fx"] > 0 and k["fy"] > 0 and 0 < k["cx"] < 512 and 0 < k["cy"] < 512
    err = report["landmark_reprojection"]
    assert err["n_landmarks"] == 478
    assert 0 <= err["mean_px"] < 10
    assert 20 < err["interocular_px"] < 400
    assert 0 <= err["mean_fraction_of_interocular"] < 0.05
    assert err["mean_fraction_of_interocular"] == pytest.approx(
        err["mean_px"] / err["interocular_px"])
    # The detail stage's light: the studio portrait's key light is clear enough for the one-light
    # fit, from the camera's side of the face.
    detail = report["engine"]["detail"]
    assert detail["light_model"] == "directional"
    light = detail["light"]
    assert light["ambient"] >= 0 and light["diffuse"] > 0 and light["direction"][2] <= 0
    assert np.linalg.norm(light["direction"]) == pytest.approx(1.0)
    assert len(detail["lighting_sh"]) == 9


def test_npz_round_trips(reconstruction):
    from hiface_blender.core.result import FaceResult

    out, _ = reconstruction
    r = FaceResult.load(out / "face.npz")
    assert r.neutral_vertices.shape == (N_VERTICES, 3)
    assert r.identity.shape == (100,) and r.expression.shape == (53,)
    assert ((r.expression >= 0) & (r.expression <= 1)).all()
    assert r.texture.ndim == 3 and r.texture.dtype == np.uint8
    assert r.source_path.endswith("astronaut.png")


def test_detail_map_files_decode_to_the_result(reconstruction):
    """The 16-bit PNGs hold the result's maps in metres to within half a step of their
    quantisation, and report.json says how to decode them."""
    from PIL import Image

    from hiface_blender.core.detail import load_displacement
    from hiface_blender.core.result import FaceResult

    out, _ = reconstruction
    r = FaceResult.load(out / "face.npz")
    report = json.loads((out / "report.json").read_text())["detail_maps"]
    for name in ("static", "compressed", "stretched"):
        truth = getattr(r, f"detail_{name}")
        assert truth.shape == (1024, 1024) and np.abs(truth).max() > 1e-5
        with Image.open(out / f"detail_{name}.png") as im:
            assert im.size == (1024, 1024) and np.asarray(im).dtype == np.uint16
        d, meta = load_displacement(out / f"detail_{name}.png")
        assert meta == {k: v for k, v in report[name].items() if k != "file"}
        assert report[name]["file"] == f"detail_{name}.png" and meta["units"] == "m"
        assert meta["scale_m"] == pytest.approx(float(np.abs(truth).max()))
        # Half of one 16-bit step (2 scale / 65535), plus float32 rounding.
        assert np.abs(d - truth).max() <= meta["scale_m"] * (1 / 65535 + 1e-6)


def test_detail_size_and_exr_maps(astronaut_png, tmp_path):
    from hiface_blender.core.detail import load_displacement
    from hiface_blender.core.result import FaceResult

    out = tmp_path / "exr"
    proc = cli("reconstruct", astronaut_png, "-o", out, "--quality", "fast",
               "--detail-size", "512", "--detail-format", "exr")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("detail_")) == [
        "detail_compressed.exr", "detail_compressed.json", "detail_static.exr",
        "detail_static.json", "detail_stretched.exr", "detail_stretched.json"]
    r = FaceResult.load(out / "face.npz")
    for name in ("static", "compressed", "stretched"):
        d, meta = load_displacement(out / f"detail_{name}.exr")
        assert meta["units"] == "m" and meta["scale_m"] == 1.0 and meta["size"] == 512
        np.testing.assert_array_equal(d, getattr(r, f"detail_{name}"))
    assert r.detail_static.shape == (512, 512)


def test_keep_neck(astronaut_png, tmp_path):
    """By default her black suit collar is filled with skin on the neck; --keep-neck keeps the
    neck as the photo shows it. Off the neck the textures agree."""
    from hiface_blender.core.model_data import FaceModelData
    from hiface_blender.core.result import FaceResult
    from hiface_blender.core.texture import neck_and_face_texels
    from hiface_blender.paths import face_model_path

    textures, seen = {}, None
    for name, extra in (("filled", ()), ("kept", ("--keep-neck",))):
        out = tmp_path / name
        proc = cli("reconstruct", astronaut_png, "-o", out, "--quality", "fast", "--no-detail", *extra)
        assert proc.returncode == 0, proc.stderr
        r = FaceResult.load(out / "face.npz")
        textures[name] = r.texture.astype(np.float64)
        seen = r.texture_mask > 0
    size = textures["kept"].shape[0]
    neck, face = neck_and_face_texels(FaceModelData.load(face_model_path()), size)
    lum = {k: t @ [0.299, 0.587, 0.114] for k, t in textures.items()}
    skin = np.median(lum["kept"][face])
    dark = {k: float(np.mean(v[neck] < 0.3 * skin)) for k, v in lum.items()}
    assert dark["kept"] > 0.2 and dark["filled"] < 0.002, dark
    assert np.abs(textures["kept"] - textures["filled"])[face & seen].max() <= 4


def test_no_detail(astronaut_png, tmp_path):
    from hiface_blender.core.result import FaceResult

    bad = tmp_path / "bad"
    proc = cli("reconstruct", astronaut_png, "-o", bad, "--no-detail", "--comparison")
    assert proc.returncode == 2 and "--no-detail" in proc.stderr and not bad.exists()
    out = tmp_path / "plain"
    proc = cli("reconstruct", astronaut_png, "-o", out, "--quality", "fast", "--no-detail")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["face.npz", "face_camera.obj", "report.json"]
    assert not FaceResult.load(out / "face.npz").has_detail
    assert json.loads((out / "report.json").read_text())["detail_maps"] == {}


OOM_RUNNER = """
import resource, sys
import torch, mediapipe, cv2  # noqa: F401  (loaded before the limit: their mappings are not the job's)
from hiface_blender.core import detail, reconstruct  # noqa: F401
vm_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
limit = vm_kb * 1024 + 2 * 2 ** 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from hiface_blender.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_memory_is_one_line_and_writes_nothing(astronaut_png, tmp_path):
    """4096 detail maps need about 4 GB; with 2 GB of address space left the run fails with a
    message that names the remedies, exit code 1, and no output folder."""
    out = tmp_path / "oom"
    proc = subprocess.run([sys.executable, "-c", OOM_RUNNER, "reconstruct", str(astronaut_png),
                           "-o", str(out), "--device", "cpu", "--quality", "fast",
                           "--detail-size", "4096"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: out of memory; try a smaller --detail-size, --quality fast, a "
                      "smaller photo or the other device"], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_blend_render_and_overlay(astronaut_png, tmp_path):
    from PIL import Image

    out = tmp_path / "blend"
    proc = cli("reconstruct", astronaut_png, "-o", out, "--quality", "fast", "--blend",
               "--render", "--samples", "2")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["detail_compressed.png", "detail_static.png", "detail_stretched.png",
                     "face.blend", "face.npz", "face_camera.obj", "overlay.png", "render.png",
                     "report.json"]
    assert (out / "face.blend").stat().st_size > 100_000
    with Image.open(out / "render.png") as im:
        assert im.size == (512, 512)
        render = np.asarray(im.convert("RGBA"))
    with Image.open(out / "overlay.png") as im:
        assert im.size == (512, 512)
    # The rendered face lies where the landmarks found the face in the photo.
    from hiface_blender.core.result import FaceResult

    lm = FaceResult.load(out / "face.npz").landmarks_detected
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    dx, dy = 0.2 * (x1 - x0), 0.2 * (y1 - y0)
    covered = render[..., 3] > 0
    assert 0.02 < covered.mean() < 0.9
    inner = covered[int(y0 + dy):int(y1 - dy), int(x0 + dx):int(x1 - dx)]
    assert inner.mean() > 0.95, inner.mean()


def _no_face_png(path: Path) -> Path:
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    Image.fromarray(((x + y) // 2).astype(np.uint8)).convert("RGB").save(path)
    return path


BAD_INPUTS = {
    "missing file": lambda d: d / "does-not-exist.jpg",
    "not an image": lambda d: _text_file(d / "notes.jpg"),
    "corrupt image": lambda d: _truncated_png(d / "broken.png"),
    "tiny image": lambda d: _tiny_png(d / "tiny.png"),
    "no face": lambda d: _no_face_png(d / "gradient.png"),
}


def _text_file(path: Path) -> Path:
    path.write_text("this is not a photo\n")
    return path


def _truncated_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def _tiny_png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    photo = BAD_INPUTS[case](tmp_path)
    out = tmp_path / "out"
    proc = cli("reconstruct", photo, "-o", out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert len(errors[0]) > len("error: ") + 10
    assert not out.exists()
    assert proc.stdout == ""


def test_usage_errors_exit_2():
    proc = cli("reconstruct")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_bench_prints_json(astronaut_png):
    proc = cli("bench", "--runs", "1", "--quality", "fast", "--image", astronaut_png,
               "--detail-sizes", "512,2048")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("photo_to_result", "build_blender_object", "enable_addon"):
        assert report[key]["median_s"] > 0, key
        assert len(report[key]["runs_s"]) == 1
    assert report["enable_addon"]["heavy_modules_imported_at_enable"] == []
    # Without and with detail are timed in pairs; what detail adds is the pairs' difference.
    (adds,) = report["detail_adds_runs_s"]
    assert adds == (report["photo_to_result_with_detail"]["runs_s"][0]
                    - report["photo_to_result"]["runs_s"][0])
    assert report["detail_adds_median_s"] == adds
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["device"]
    # Per map size, in its own process: detail seconds and the memory the stage itself adds.
    sizes = report["detail_sizes"]
    assert sorted(sizes) == ["2048", "512"]
    for v in sizes.values():
        assert v["detail_median_s"] > 0 and len(v["detail_runs_s"]) == 1
        assert v["detail_peak_is_own"] and 0 < v["detail_added_mb"] < v["peak_rss_mb"]
    # Sixteen times the texels: the stage's own peak grows with them. Much of it is fixed at small
    # sizes (the wrinkle pattern's 512x512 work arrays; the static part works only on the seen
    # texels): 512 -> 1024 is only 1.2-1.56x (ten runs), 512 -> 2048 about 5x (155-167 MB ->
    # about 850 MB).
    assert sizes["2048"]["detail_added_mb"] > 2.5 * sizes["512"]["detail_added_mb"], sizes


def test_bench_rejects_unknown_detail_sizes():
    proc = cli("bench", "--detail-sizes", "512,300")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --detail-sizes takes sizes")


@pytest.fixture(scope="module")
def grid_reconstruction(tmp_path_factory):
    from PIL import Image

    from hiface_testdata import read_grid_frames

    d = tmp_path_factory.mktemp("cli_grid")
    Image.fromarray(read_grid_frames("bbaf2n", frames=(0,))[0]).save(d / "grid.png")
    proc = cli("reconstruct", d / "grid.png", "-o", d / "out", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return d / "out"


def test_transfer_writes_the_target_with_the_source_expression(reconstruction,
                                                              grid_reconstruction, tmp_path):
    from hiface_blender.core.result import FaceResult

    source_npz, target_npz = reconstruction[0] / "face.npz", grid_reconstruction / "face.npz"
    out = tmp_path / "moved"
    proc = cli("transfer", source_npz, target_npz, "-o", out, "--blend")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["face.blend", "face.npz", "report.json"]
    assert (out / "face.blend").stat().st_size > 100_000
    source, target = FaceResult.load(source_npz), FaceResult.load(target_npz)
    r = FaceResult.load(out / "face.npz")
    for k in ("identity", "neutral_vertices", "texture", "detail_static", "expression_tension"):
        np.testing.assert_array_equal(getattr(r, k), getattr(target, k), err_msg=k)
    for k in ("expression", "detail_compressed", "detail_stretched"):
        np.testing.assert_array_equal(getattr(r, k), getattr(source, k), err_msg=k)


def test_transfer_bad_input_is_one_line_exit_2_and_writes_nothing(reconstruction, tmp_path):
    import dataclasses

    from hiface_blender.core.result import FaceResult

    good = reconstruction[0] / "face.npz"
    flat = tmp_path / "flat.npz"
    dataclasses.replace(FaceResult.load(good),
                        detail_static=np.zeros((0, 0), np.float32)).save(flat)
    for source, target in ((good, _text_file(tmp_path / "x.npz")), (good, tmp_path / "none.npz"),
                           (flat, good), (good, flat)):
        out = tmp_path / "out"
        proc = cli("transfer", source, target, "-o", out, "--blend")
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert not out.exists()
