"""Photo loading on real files synthesised from the astronaut: every bad-input case and every
pixel format the product promises to accept."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from hiface_blender.core.errors import HiFaceError
from hiface_blender.core.imageio import MAX_SIDE, load_photo, photo_from_array
from hiface_testdata import REPO


def _err(path) -> str:
    with pytest.raises(HiFaceError) as e:
        load_photo(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300
    return msg


# -- bad input -------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    assert "not found" in _err(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    assert "folder" in _err(tmp_path)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is a shopping list, not a photo\n" * 20)
    assert "not an image" in _err(p)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.png"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "not an image" in _err(p)


def test_heic_photo_says_how_to_convert(tmp_path, astronaut):
    """A phone's HEIC photo (here the astronaut in the same HEIF container, written by Pillow as
    AVIF, which it reads, and branded HEIC as an iPhone brands it, which it does not)."""
    avif = tmp_path / "photo.avif"
    Image.fromarray(astronaut).save(avif)
    assert load_photo(avif).rgb.shape == astronaut.shape
    data = bytearray(avif.read_bytes())
    assert data[4:12] == b"ftypavif"
    data[8:12] = b"heic"
    p = tmp_path / "IMG_0001.HEIC"
    p.write_bytes(bytes(data))
    msg = _err(p)
    assert "HEIC" in msg and "JPEG or PNG" in msg


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, astronaut, fmt):
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(astronaut).save(full, fmt)
    data = full.read_bytes()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 3])
    assert "corrupt or truncated" in _err(p)


def test_corrupt_body(tmp_path, astronaut):
    # A valid PNG header followed by damaged compressed data.
    full = tmp_path / "full.png"
    Image.fromarray(astronaut).save(full)
    data = bytearray(full.read_bytes())
    data[200:4000] = bytes(3800)
    p = tmp_path / "damaged.png"
    p.write_bytes(bytes(data))
    assert "corrupt or truncated" in _err(p)


def test_tiny(tmp_path, astronaut):
    p = tmp_path / "tiny.png"
    Image.fromarray(astronaut).resize((48, 48)).save(p)
    msg = _err(p)
    assert "too small" in msg and "48x48" in msg


def test_decompression_bomb_guard_reported(tmp_path, astronaut, monkeypatch):
    # Pillow's own guard, set low so that a normal file trips it: the refusal becomes one line.
    p = tmp_path / "a.png"
    Image.fromarray(astronaut).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    assert "too large" in _err(p)


# -- formats that must work ------------------------------------------------------------------

def test_plain_rgb_roundtrip(tmp_path, astronaut):
    p = tmp_path / "a.png"
    Image.fromarray(astronaut).save(p)
    ph = load_photo(p)
    assert ph.rgb.dtype == np.uint8 and ph.rgb.flags.c_contiguous
    assert np.array_equal(ph.rgb, astronaut)
    assert ph.notes == [] and ph.original_size == (512, 512)


def test_grayscale(tmp_path, astronaut):
    p = tmp_path / "g.jpg"
    Image.fromarray(astronaut).convert("L").save(p, quality=95)
    ph = load_photo(p)
    assert ph.rgb.shape == (512, 512, 3)
    assert np.array_equal(ph.rgb[..., 0], ph.rgb[..., 2])
    assert any("grayscale" in n for n in ph.notes)


def test_rgba_composited_on_white(tmp_path, astronaut):
    rgba = np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])
    rgba[:100, :, 3] = 0
    p = tmp_path / "a.png"
    Image.fromarray(rgba).save(p)
    ph = load_photo(p)
    assert (ph.rgb[:100] == 255).all()
    assert np.array_equal(ph.rgb[100:], astronaut[100:])
    assert any("transparent" in n for n in ph.notes)


def test_palette_with_transparency(tmp_path, astronaut):
    p = tmp_path / "p.png"
    im = Image.fromarray(astronaut).quantize(64)
    im.info["transparency"] = 0
    im.save(p, transparency=0)
    ph = load_photo(p)
    assert ph.rgb.shape == (512, 512, 3)
    # The palette image stays close to the photo (64 colours), transparent pixels turn white.
    idx = np.asarray(im)
    opaque = idx != 0
    err = np.abs(ph.rgb[opaque].astype(int) - astronaut[opaque]).mean()
    assert err < 12
    assert (ph.rgb[~opaque] == 255).all()


def test_16bit_gray_png_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I")
    ph = load_photo(p)
    g = ph.rgb[..., 0].astype(int)
    assert g.min() == 0 and g.max() == 255
    # Linear: a mid-grey 16-bit value becomes mid-grey, not white (naive clipping) or black.
    assert abs(int(g[128, 0]) - 128) <= 1
    assert any("16-bit" in n for n in ph.notes)


def test_16bit_rgb_png_and_tiff(tmp_path, astronaut):
    import cv2
    a16 = astronaut.astype(np.uint16) * 257
    for ext in ("png", "tif"):
        p = tmp_path / f"c16.{ext}"
        assert cv2.imwrite(str(p), np.ascontiguousarray(a16[:, :, ::-1]))
        ph = load_photo(p)
        assert np.abs(ph.rgb.astype(int) - astronaut).max() <= 1, ext


def test_cmyk_jpeg(tmp_path, astronaut):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(p, quality=95)
    ph = load_photo(p)
    assert np.abs(ph.rgb.astype(float) - astronaut).mean() < 8
    assert any("CMYK" in n for n in ph.notes)


@pytest.mark.parametrize("orientation,undo", [
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, 1)),     # stored rotated 90 deg clockwise
    (8, lambda a: np.rot90(a, -1)),
])
def test_exif_orientation(tmp_path, astronaut, orientation, undo):
    upright = np.ascontiguousarray(astronaut[:, 50:450])   # not square: catches swapped axes
    stored = np.ascontiguousarray(undo(upright))
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / "rot.jpg"
    im.save(p, quality=95, exif=exif)
    ph = load_photo(p)
    assert ph.rgb.shape == upright.shape
    assert ph.original_size == (400, 512)
    assert np.abs(ph.rgb.astype(float) - upright).mean() < 4
    assert any("EXIF" in n for n in ph.notes)


def test_photo_from_array_formats(astronaut):
    f = astronaut.astype(np.float32) / 255.0
    rgba = np.dstack([f, np.ones((512, 512), np.float32)])
    ph = photo_from_array(rgba[::-1], bottom_up=True)
    assert np.array_equal(ph.rgb, astronaut)
    g16 = (astronaut[..., 1].astype(np.uint16) * 257)
    ph = photo_from_array(g16)
    assert np.array_equal(ph.rgb[..., 2], astronaut[..., 1])
    with pytest.raises(HiFaceError):
        photo_from_array(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(HiFaceError):
        photo_from_array(np.zeros((100, 100, 5), np.uint8))


# -- huge photos: memory stays bounded --------------------------------------------------------

_HUGE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import cv2  # loaded by the product before any photo; its libraries are not the photo's
    from hiface_blender.core.imageio import load_photo

    def hwm_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    # ru_maxrss survives exec (it would report the parent's peak); VmHWM can be reset.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = hwm_mb()
    ph = load_photo({path!r})
    print(json.dumps(dict(shape=ph.rgb.shape, notes=ph.notes, size=ph.original_size,
                          base_mb=base, peak_mb=hwm_mb())))
""")


def _load_in_child(path):
    code = _HUGE.format(repo=str(REPO), path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                                reason="peak-memory measurement needs Linux /proc")


@needs_proc
def test_huge_jpeg_downscaled_with_bounded_memory(tmp_path, astronaut):
    p = tmp_path / "huge.jpg"
    Image.fromarray(astronaut).resize((9000, 9000), Image.Resampling.BILINEAR).save(p, quality=80)
    r = _load_in_child(p)
    assert max(r["shape"][:2]) == MAX_SIDE and r["size"] == [9000, 9000]
    assert any("huge photo downscaled from 9000x9000" in n for n in r["notes"])
    # A full decode alone is 243 MB; the draft decode stays far below that.
    assert r["peak_mb"] - r["base_mb"] < 200, r


@needs_proc
def test_huge_png_downscaled(tmp_path, astronaut):
    p = tmp_path / "huge.png"
    Image.fromarray(astronaut).resize((8200, 6000), Image.Resampling.NEAREST).save(p, compress_level=1)
    r = _load_in_child(p)
    assert r["shape"] == [round(6000 * MAX_SIDE / 8200), MAX_SIDE, 3]
    # PNG has no reduced decode: bounded by one full 8-bit frame plus the reduced copies.
    assert r["peak_mb"] - r["base_mb"] < 8200 * 6000 * 3 / 2**20 * 1.8, r
