"""Photo loading: any reasonable image file (or an in-memory array from Blender) -> 8-bit sRGB.

Every failure the user can fix raises `HiFaceError` with one line. What was done to the image
on the way (EXIF rotation, alpha, bit depth, downscaling) is recorded in `Photo.notes` so the
report can say it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import HiFaceError

MIN_SIDE = 64          # below this MediaPipe cannot find facial features
MAX_SIDE = 4096        # longer side after loading; more resolution only costs time
HUGE_SIDE = 8000       # above this the user is told the photo was downscaled

BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


@dataclass
class Photo:
    rgb: np.ndarray                 # (H, W, 3) uint8, C-contiguous, sRGB, top row first
    notes: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)   # (width, height) of the file, after EXIF rotation

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _is_heif(path: Path) -> bool:
    """An ISO media file whose brand is one of HEIF's (phones' default photo format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis",
                                                   b"hevm", b"hevs", b"mif1", b"msf1")


def load_photo(path) -> Photo:
    """Read an image file into a `Photo`, or raise `HiFaceError` saying what is wrong with it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise HiFaceError(f"Photo not found: {p}")
    if p.is_dir():
        raise HiFaceError(f"{p} is a folder, not an image file")
    name = p.name
    notes: list[str] = []
    try:
        # Pillow's decompression-bomb guard stays as it is: above MAX_IMAGE_PIXELS it warns,
        # above twice that it refuses. The warning is expected here (huge photos are handled),
        # the refusal is reported.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
            if im.format == "PNG":
                # PNG decoding does not check chunk CRCs; verify() does, and reads no pixels.
                im.verify()
                im = Image.open(p)
    except UnidentifiedImageError:
        if _is_heif(p):
            raise HiFaceError(f"{name} is a HEIC/HEIF photo, which cannot be read here: export it "
                              "as JPEG or PNG (an iPhone does so with Settings > Camera > "
                              "Formats > Most Compatible)") from None
        raise HiFaceError(f"{name} is not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise HiFaceError(f"{name} is too large to open safely (over "
                          f"{2 * (Image.MAX_IMAGE_PIXELS or 0) // 1_000_000} megapixels); "
                          "downscale it first") from None
    except (SyntaxError, ValueError, EOFError) as e:
        raise HiFaceError(f"{name} is corrupt or truncated ({e})") from None
    except OSError as e:
        if e.strerror:
            raise HiFaceError(f"Cannot open {name}: {e.strerror}") from None
        raise HiFaceError(f"{name} is corrupt or truncated ({e})") from None

    try:
        if getattr(im, "n_frames", 1) > 1:
            notes.append("multi-frame image: using the first frame")
        w0, h0 = im.size
        # JPEG can decode at 1/2, 1/4, 1/8 scale straight from the DCT: a 9000 px photo
        # never exists at full size in memory.
        if im.format == "JPEG" and max(w0, h0) > MAX_SIDE:
            im.draft("RGB" if im.mode != "L" else "L", (MAX_SIDE, MAX_SIDE))
        orient = _orientation(im)
        im.load()
        # Each step replaces `im` so that the previous (larger) image can be freed at once.
        im = _reduce(im, MAX_SIDE)
        ImageOps.exif_transpose(im, in_place=True)
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        im.close()
        raise HiFaceError(f"{name} is corrupt or truncated ({e})") from None

    long0 = max(w0, h0)
    if orient in (5, 6, 7, 8):  # quarter turns: width and height trade places
        w0, h0 = h0, w0
    if orient not in (1, 0):
        notes.append(f"rotated upright by its EXIF orientation tag ({orient})")
    if min(w0, h0) < MIN_SIDE:
        raise HiFaceError(f"{name} is too small ({w0}x{h0}); the face needs at least "
                          f"{MIN_SIDE} px on the short side")
    rgb = _to_rgb8(im, notes)
    im.close()
    del im
    rgb = _fit(rgb, MAX_SIDE)
    if rgb.shape[:2] != (h0, w0):
        tag = "huge photo" if long0 > HUGE_SIDE else "photo"
        notes.append(f"{tag} downscaled from {w0}x{h0} to {rgb.shape[1]}x{rgb.shape[0]}")
    return Photo(np.ascontiguousarray(rgb), notes, (w0, h0))


def photo_from_array(arr, bottom_up: bool = False) -> Photo:
    """Normalise an in-memory image: float (0..1), uint8 or uint16; gray, gray+alpha, RGB or
    RGBA. Values are taken as display-referred (sRGB), as Blender stores byte images. Blender's
    `Image.pixels` are bottom row first: pass bottom_up=True for those."""
    a = np.asarray(arr)
    notes: list[str] = []
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise HiFaceError(f"Image array has shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if min(a.shape[:2]) < MIN_SIDE:
        raise HiFaceError(f"Image is too small ({a.shape[1]}x{a.shape[0]}); the face needs at "
                          f"least {MIN_SIDE} px on the short side")
    if a.dtype == np.uint8:
        f = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
        notes.append("16-bit image converted to 8-bit")
    elif np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if f.max(initial=0.0) > 1.0 + 1e-3:
            notes.append("values above 1 clipped")
        f = np.clip(f, 0.0, 1.0)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        f = a.astype(np.float32) / (255.0 if a.max(initial=0) <= 255 else 65535.0)
    else:
        raise HiFaceError(f"Unsupported image array type {a.dtype}")
    c = f.shape[2]
    if c in (2, 4):
        alpha = f[:, :, -1:]
        if float(alpha.min()) < 1.0:
            notes.append("transparent pixels composited on white")
        f = f[:, :, :-1] * alpha + (1.0 - alpha)
        c -= 1
    if c == 1:
        notes.append("grayscale image")
        f = np.repeat(f, 3, axis=2)
    if bottom_up:
        f = f[::-1]
    rgb = np.round(f * 255.0).astype(np.uint8)
    h, w = rgb.shape[:2]
    rgb = _fit(rgb, MAX_SIDE)
    if rgb.shape[:2] != (h, w):
        notes.append(f"downscaled from {w}x{h} to {rgb.shape[1]}x{rgb.shape[0]}")
    return Photo(np.ascontiguousarray(rgb), notes, (a.shape[1], a.shape[0]))


# -- helpers ---------------------------------------------------------------------------------

def _orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not stop the photo from loading
        return 1


def _reduce(im, max_side: int):
    """Integer box reduction in Pillow: cheap, and frees the full-size decode early."""
    w, h = im.size
    factor = max(w, h) // max_side
    if factor < 2:
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    if im.mode in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F", "I;16"):
        im = im.reduce(factor)
    return im


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Final area resampling on 3-byte pixels (Pillow would hold 4 bytes a pixel twice over)."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    import cv2
    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _to_rgb8(im, notes: list[str]) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 sRGB."""
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.float32)
        # Mode "I" also arrives from 16-bit PNG/TIFF after processing; a true 32-bit range is
        # rescaled by its own maximum.
        top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        if mode.startswith("I;16") or a.max(initial=0) > 255:
            notes.append("16-bit grayscale converted to 8-bit")
        else:
            top = 255.0
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32))
        top = 1.0 if a.max(initial=0) <= 1.0 else float(a.max())
        notes.append("floating-point grayscale converted to 8-bit")
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)

    im = _to_srgb_profile(im, notes)
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = im.convert("RGBA")
        a = np.asarray(rgba)
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        if alpha.min() < 1.0:
            notes.append("transparent pixels composited on white")
        bg = np.array(BACKGROUND, np.float32)
        rgb = a[:, :, :3].astype(np.float32) * alpha + bg * (1.0 - alpha)
        out = np.round(rgb).astype(np.uint8)
        if mode in ("LA", "La"):
            notes.append("grayscale photo")
        return out
    if mode in ("L", "1"):
        notes.append("grayscale photo")
        g = _array(im if mode == "L" else im.convert("L"))
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    if mode != "RGB":
        im = im.convert("RGB")
    return _array(im)


def _array(im, rows: int = 512) -> np.ndarray:
    """Pillow image -> numpy in horizontal strips: np.asarray on a whole large image holds
    the pixels three times at once (image, bytes, array)."""
    w, h = im.size
    if w * h <= 4_000_000:
        return np.asarray(im)
    first = np.asarray(im.crop((0, 0, w, min(rows, h))))
    out = np.empty((h,) + first.shape[1:], first.dtype)
    out[: first.shape[0]] = first
    for y in range(rows, h, rows):
        out[y: y + rows] = np.asarray(im.crop((0, y, w, min(y + rows, h))))
    return out


def _to_srgb_profile(im, notes: list[str]):
    """Convert through an embedded ICC profile to sRGB where one is present (CMYK, Adobe RGB)."""
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return im
    try:
        from PIL import ImageCms
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = ImageCms.getProfileDescription(src).strip().lower()
        if "srgb" in desc:
            return im
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                        outputMode=out_mode)
        notes.append(f"colour profile '{desc}' converted to sRGB")
        return out
    except Exception:  # a broken profile: fall back to Pillow's plain conversion
        return im
