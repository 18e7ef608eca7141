"""Synthetic photos of ICT faces with known coefficients, for accuracy measurements.

`render_face` rasterises the full ICT head (skin from a texture in the face UV layout, flat
colours for the back of the head, mouth interior, teeth, sclera and a procedural iris with a
pupil) under Lambert + ambient shading, in the same camera model the fitter uses: OpenCV axes,
millimetres, principal point at the image centre, pixel centres at integer + 0.5.
`random_case` draws identity, a sparse expression, head pose, focal length, light and background.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .gaze import with_gaze
from .model_data import NARROW_FACE_STOP, PARTS, FaceModelData

# Parts that are transparent overlays or hair cards in ICT: left out of the render.
_SKIPPED_MATERIALS = ("M_LacrimalFluid", "M_EyeBlend", "M_EyeOcclusion", "M_EyeLashes")

# Expressions a random case draws from: common, visible, and not contradicting each other.
EXPRESSION_SUBSET = (
    "mouthSmile_L", "mouthSmile_R", "jawOpen", "eyeBlink_L", "eyeBlink_R",
    "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "browDown_L", "browDown_R",
    "mouthPucker", "mouthFunnel", "eyeSquint_L", "eyeSquint_R", "mouthFrown_L", "mouthFrown_R",
    "eyeWide_L", "eyeWide_R", "mouthStretch_L", "mouthStretch_R", "noseSneer_L", "noseSneer_R",
)

SCLERA_RGB = (222, 216, 208)
PUPIL_RGB = (12, 10, 10)
TEETH_RGB = (214, 206, 188)
GUMS_RGB = (120, 52, 52)
MOUTH_RGB = (48, 18, 18)
SOCKET_RGB = (40, 28, 26)
NECK_FADE_Y = (-12.0, -10.3)  # ICT neutral y (cm) over which the neck fades from texture to skin
# Angular radii (radians, from the eyeball's forward axis) of pupil and iris.
PUPIL_ANGLE = 0.16
IRIS_ANGLE = 0.42


@dataclass
class Light:
    direction: tuple = (-0.35, -0.45, -1.0)  # towards the light, camera axes (y down, z forward)
    ambient: float = 0.45
    diffuse: float = 0.65


@dataclass
class SyntheticCase:
    identity: np.ndarray          # (100,)
    expression: np.ndarray        # (53,)
    rotation: np.ndarray          # (3, 3) OpenCV model axes -> camera
    translation: np.ndarray       # (3,) mm
    K: np.ndarray                 # (3, 3)
    size: tuple                   # (h, w)
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    light: Light
    background: np.ndarray        # (h, w, 3) uint8
    iris_rgb: tuple
    noise_sigma: float
    seed: int = 0
    active: list = field(default_factory=list)  # names of the expressions that are on

    @property
    def focal(self) -> float:
        return float(self.K[0, 0])


def rotation_ypr(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw) in OpenCV camera axes; yaw > 0 turns the face to image left."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def model_vertices(model: FaceModelData, identity, expression) -> np.ndarray:
    """All vertices, ICT axes, cm; the eyeballs turned by the eyeLook weights (core.gaze)."""
    v = (model.neutral + np.tensordot(np.asarray(identity, np.float32), model.id_basis, 1)
         + np.tensordot(np.asarray(expression, np.float32), model.exp_basis, 1))
    return with_gaze(v, expression, model.exp_names, model.vertex_part)


def camera_vertices(model: FaceModelData, identity, expression, rotation, translation) -> np.ndarray:
    """All vertices in the camera frame: OpenCV axes, mm (the FaceResult convention)."""
    v = model_vertices(model, identity, expression) * np.array([10.0, -10.0, -10.0], np.float32)
    return (v @ np.asarray(rotation, np.float32).T + np.asarray(translation, np.float32)).astype(np.float32)


def case_landmarks(model: FaceModelData, case, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe landmarks `ids` (all when None) of a case's true shape: camera-frame points
    (P, 3) mm and their pixel positions (P, 2)."""
    from .landmark_noise import ICT_TO_CV_MM

    ids = np.arange(len(model.mp_tri)) if ids is None else np.asarray(ids)
    cam = camera_vertices(model, case.identity, case.expression, case.rotation,
                          case.translation).astype(np.float64)
    pts = model.landmark_skin_points(cam, ids)
    # Each landmark's offset from the surface (calibrate.py), fixed in the head's frame.
    off = model.mp_offset[ids].astype(np.float64) * ICT_TO_CV_MM
    pts = pts + off @ np.asarray(case.rotation, np.float64).T
    return pts, pts[:, :2] / pts[:, 2:] * case.K[0, 0] + case.K[:2, 2]


class _Tables:
    """Per-model lookups for rendering, computed once."""

    def __init__(self, model: FaceModelData) -> None:
        names = [str(n) for n in model.material_names]
        tri_mat = model.poly_material[model.tri_poly]
        keep = ~np.isin(tri_mat, [names.index(n) for n in _SKIPPED_MATERIALS if n in names])
        self.tris = model.tris[keep]
        self.tri_uv = model.tri_uv[keep]
        self.tri_mat = tri_mat[keep]
        self.face_mat = names.index("M_Face")
        self.flat = {}  # material -> colour, for materials with one colour
        for name, rgb in (("M_GumsTongue", GUMS_RGB), ("M_Teeth", TEETH_RGB)):
            self.flat[names.index(name)] = np.array(rgb, np.float32)
        self.back_mat = names.index("M_BackHead")
        # The sclera meshes are the eyeballs' outer shells (cornea included) and hide the inner
        # iris meshes: both get the procedural eye colouring, so what is seen is the shell.
        self.eye_mats = tuple(names.index(n) for n in
                              ("M_ScleraLeft", "M_ScleraRight", "M_IrisLeft", "M_IrisRight"))
        # Back-head material: skin on head and neck, dark in the mouth and eye sockets.
        part_names = [p[0] for p in PARTS]
        self.vertex_part = model.vertex_part.astype(np.int64)
        self.mouth_parts = [part_names.index("mouth_socket")]
        self.socket_parts = [part_names.index("eye_socket_l"), part_names.index("eye_socket_r")]
        # Angle of each eyeball vertex from its eye's forward axis, in the rest pose; the
        # iris and pupil are drawn per pixel from the interpolated angle.
        # Below the chin the face texture holds whatever was under the photo's chin (a collar,
        # say): fade those texels to plain skin.
        y = model.neutral[:, 1]
        self.texture_weight = np.ones(model.n_vertices, np.float32)
        outer = np.arange(model.n_vertices) >= NARROW_FACE_STOP
        self.texture_weight[outer] = np.clip((y[outer] - NECK_FADE_Y[0]) / (NECK_FADE_Y[1] - NECK_FADE_Y[0]), 0, 1)
        self.eye_angle = np.zeros(model.n_vertices, np.float32)
        for part in ("eyeball_l", "eyeball_r"):
            sel = model.vertex_part == part_names.index(part)
            v = model.neutral[sel].astype(np.float64)
            lo, hi = v.min(0), v.max(0)
            centre = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2] + (hi[0] - lo[0]) / 2])
            apex = v[v[:, 2].argmax()] - centre
            axis = apex / np.linalg.norm(apex)
            d = v - centre
            cosang = (d @ axis) / np.maximum(np.linalg.norm(d, axis=1), 1e-9)
            self.eye_angle[sel] = np.arccos(np.clip(cosang, -1, 1))


_TABLES: dict[int, _Tables] = {}


def _tables(model: FaceModelData) -> _Tables:
    t = _TABLES.get(id(model))
    if t is None or t.tris.max() >= model.n_vertices:
        t = _TABLES[id(model)] = _Tables(model)
    return t


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img (H, W, C) at continuous pixel coordinates (pixel centres at integer + 0.5)."""
    h, w = img.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1)
    y = np.clip(y - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = img.astype(np.float32)
    return ((im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx) * (1 - fy)
            + (im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx) * fy)


def skin_colour(skin_texture: np.ndarray) -> np.ndarray:
    """A representative skin colour of a texture: the median of its middle (cheeks, nose)."""
    t = skin_texture.shape[0]
    mid = skin_texture[int(0.35 * t):int(0.65 * t), int(0.3 * t):int(0.7 * t)].reshape(-1, 3)
    return np.median(mid.astype(np.float32), axis=0)


def make_background(rng: np.random.Generator, size: tuple) -> np.ndarray:
    """A smooth random backdrop: a two-colour gradient with low-frequency blotches."""
    import cv2

    h, w = size
    c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = ((xx / w - 0.5) * np.cos(ang) + (yy / h - 0.5) * np.sin(ang)) + 0.5
    img = c0 * (1 - s[..., None]) + c1 * s[..., None]
    blotch = cv2.resize(rng.normal(0, 18, (6, 6, 3)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    return np.clip(img + blotch, 0, 255).astype(np.uint8)


def render_face(model: FaceModelData, identity, expression, rotation, translation, K, size,
                skin_texture: np.ndarray, background=(128, 128, 128), light: Light | None = None,
                iris_rgb=(92, 62, 40), supersample: int = 2, noise_sigma: float = 0.0,
                seed: int = 0) -> np.ndarray:
    """An RGB uint8 photo (h, w, 3) of the ICT head with the given coefficients and camera.

    identity (100,), expression (53,); rotation/translation map OpenCV-axes model mm to camera
    mm; K has its principal point at the image centre for the fitter's camera model to hold.
    `skin_texture` (T, T, 3) uint8 is in the face UV layout (row 0 = v = 1). `background` is a
    colour or an (h, w, 3) image.
    """
    from .geometry import vertex_normals
    from .raster import rasterize

    light = light or Light()
    h, w = size
    ss = max(int(supersample), 1)
    tab = _tables(model)
    cam = camera_vertices(model, identity, expression, rotation, translation).astype(np.float64)
    k = np.asarray(K, np.float64)
    z = cam[:, 2]
    px = np.empty_like(cam)
    px[:, 0] = (k[0, 0] * cam[:, 0] / z + k[0, 2]) * ss
    px[:, 1] = (k[1, 1] * cam[:, 1] / z + k[1, 2]) * ss
    px[:, 2] = z
    ras = rasterize(px, tab.tris, h * ss, w * ss, perspective=True)

    hit = ras.tri_id >= 0
    tid = ras.tri_id[hit]
    bary = ras.bary[hit].astype(np.float32)
    mat = tab.tri_mat[tid]
    tv = tab.tris[tid]
    colour = np.zeros((len(tid), 3), np.float32)

    face = mat == tab.face_mat
    if face.any():
        uv = (model.uvs[tab.tri_uv[tid[face]]] * bary[face][:, :, None]).sum(1)
        t = skin_texture.shape[0]
        tw = (tab.texture_weight[tv[face]] * bary[face]).sum(1)[:, None]
        colour[face] = (tw * _bilinear(skin_texture, uv[:, 0] * t, (1.0 - uv[:, 1]) * t)
                        + (1 - tw) * skin_colour(skin_texture))
    for m, rgb in tab.flat.items():
        colour[mat == m] = rgb
    back = mat == tab.back_mat
    if back.any():
        part = tab.vertex_part[tv[back, 0]]
        c = np.broadcast_to(skin_colour(skin_texture) * 0.92, (int(back.sum()), 3)).copy()
        c[np.isin(part, tab.mouth_parts)] = MOUTH_RGB
        c[np.isin(part, tab.socket_parts)] = SOCKET_RGB
        colour[back] = c
    eye = np.isin(mat, tab.eye_mats)
    if eye.any():
        ang = (tab.eye_angle[tv[eye]] * bary[eye]).sum(1)
        iris = np.asarray(iris_rgb, np.float32)
        # Iris darkens towards the limbus ring; sclera outside; pupil inside.
        rim = np.clip((ang - PUPIL_ANGLE) / (IRIS_ANGLE - PUPIL_ANGLE), 0, 1)[:, None]
        c = iris * (1.0 - 0.45 * rim ** 3)
        c = np.where((ang < PUPIL_ANGLE)[:, None], np.array(PUPIL_RGB, np.float32), c)
        c = np.where((ang > IRIS_ANGLE)[:, None], np.array(SCLERA_RGB, np.float32), c)
        colour[eye] = c

    normals = vertex_normals(cam, model.tris)
    n = (normals[tv] * bary[:, :, None]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    ldir = np.asarray(light.direction, np.float64)
    ldir = ldir / np.linalg.norm(ldir)
    shade = light.ambient + light.diffuse * np.clip(n @ ldir, 0.0, None)
    colour *= shade[:, None].astype(np.float32)

    bg = np.asarray(background, np.float32)
    if bg.ndim == 1:
        img = np.broadcast_to(bg, (h * ss, w * ss, 3)).copy()
    else:
        if bg.shape[:2] != (h, w):
            raise ValueError(f"background is {bg.shape[:2]}, image is {(h, w)}")
        img = np.repeat(np.repeat(bg, ss, 0), ss, 1)
    img[hit] = colour
    if ss > 1:
        img = img.reshape(h, ss, w, ss, 3).mean((1, 3))
    if noise_sigma > 0:
        img = img + np.random.default_rng(seed).normal(0, noise_sigma, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def random_case(rng: np.random.Generator, model: FaceModelData, size=(512, 512)) -> SyntheticCase:
    """Identity ~ N(0, 1); 2-4 expressions from EXPRESSION_SUBSET at 0.2-0.9; yaw within +-30
    degrees, pitch +-10, roll +-8; focal 1.0-1.45 x max(h, w); head 35-55 % of the image wide."""
    h, w = size
    names = [str(n) for n in model.exp_names]
    identity = rng.standard_normal(model.id_basis.shape[0]).astype(np.float32)
    expression = np.zeros(len(names), np.float32)
    k = int(rng.integers(2, 5))
    active = [str(a) for a in rng.choice(EXPRESSION_SUBSET, size=k, replace=False)]
    for a in active:
        expression[names.index(a)] = rng.uniform(0.2, 0.9)
    yaw, pitch, roll = rng.uniform(-30, 30), rng.uniform(-10, 10), rng.uniform(-8, 8)
    f = float(max(h, w) * np.exp(rng.uniform(np.log(1.0), np.log(1.45))))
    # Distance so the head (about 160 mm wide) spans the drawn fraction of the image.
    width_frac = rng.uniform(0.35, 0.55)
    depth = f * 160.0 / (width_frac * w)
    shift = rng.uniform(-0.06, 0.06, 2) * np.array([w, h]) * depth / f
    translation = np.array([shift[0], shift[1], depth], np.float32)
    K = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float32)
    light = Light(direction=(rng.uniform(-0.6, 0.6), rng.uniform(-0.7, 0.1), -1.0),
                  ambient=float(rng.uniform(0.35, 0.55)), diffuse=float(rng.uniform(0.45, 0.7)))
    iris = tuple(float(x) for x in rng.choice(np.array([[92, 62, 40], [60, 40, 28], [70, 100, 120],
                                                        [90, 100, 70]]), axis=0))
    return SyntheticCase(identity=identity, expression=expression,
                         rotation=rotation_ypr(yaw, pitch, roll).astype(np.float32),
                         translation=translation, K=K, size=(h, w), yaw_deg=float(yaw),
                         pitch_deg=float(pitch), roll_deg=float(roll), light=light,
                         background=make_background(rng, size), iris_rgb=iris,
                         noise_sigma=float(rng.uniform(0.0, 3.0)), seed=int(rng.integers(2 ** 31)),
                         active=active)


def with_random_gaze(rng: np.random.Generator, model: FaceModelData, case: SyntheticCase) -> SyntheticCase:
    """The case with both eyes looking the same way: sideways weights up to 0.8 (24 degrees),
    up or down up to 0.7 (11 / 22 degrees); a blink kept under 0.3 so the irises show."""
    names = [str(n) for n in model.exp_names]
    e = case.expression.copy()
    for k in ("eyeBlink_L", "eyeBlink_R"):
        e[names.index(k)] = min(e[names.index(k)], 0.3)
    side, vertical = rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.7)
    keys = ("eyeLookOut_L", "eyeLookIn_R") if side > 0 else ("eyeLookIn_L", "eyeLookOut_R")
    keys += tuple(f"eyeLook{'Up' if vertical > 0 else 'Down'}_{s}" for s in ("L", "R"))
    for k in keys:
        e[names.index(k)] = abs(side) if "In" in k or "Out" in k else abs(vertical)
    return replace(case, expression=e, active=list(case.active) + list(keys))


def synthetic_cases(model, n: int, seed: int, size=(512, 512)):
    """Case i depends only on (seed, i): a longer run extends a shorter one."""
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        yield i, random_case(np.random.default_rng(child), model, size)


def render_case(model: FaceModelData, case: SyntheticCase, skin_texture: np.ndarray) -> np.ndarray:
    return render_face(model, case.identity, case.expression, case.rotation, case.translation,
                       case.K, case.size, skin_texture, background=case.background,
                       light=case.light, iris_rgb=case.iris_rgb, noise_sigma=case.noise_sigma,
                       seed=case.seed)


CANONICAL_SKIN_SETTINGS = {"quality": "standard", "device": "cpu", "detail": False}


def skin_texture_path(size: int) -> Path:
    """Cached per build of the model data: the texture depends on the fit and the texture code,
    and a copy made by an older build would make the synthetic figures differ between machines."""
    import hashlib

    from .. import paths
    data = paths.data_dir()
    stamp = data / "build-stamp.json"
    key = stamp.read_bytes() if stamp.is_file() else str((data / paths.FACE_MODEL).stat().st_mtime_ns).encode()
    tag = hashlib.blake2b(key, digest_size=6).hexdigest()
    return paths.user_cache_dir().parent / "synthetic" / f"astronaut_skin_{size}_{tag}.png"


def astronaut_skin_texture(reconstructor=None, size: int = 1024) -> np.ndarray:
    """The face texture unwrapped from the astronaut photo by the real pipeline, cached on disk
    (derived from a real photo so the landmark detector sees real skin, brows and lips)."""
    from PIL import Image

    path = skin_texture_path(size)
    if path.is_file():
        return np.asarray(Image.open(path).convert("RGB"))
    from skimage import data

    from .reconstruct import Reconstructor, ReconstructSettings
    from .result import posed_vertices
    from .texture import extract_texture

    # One texture per build whoever asks first: a faster or GPU reconstructor would fit and
    # unwrap it a little differently, and every synthetic figure would depend on who made it.
    own = reconstructor is None or not (
        reconstructor.settings.quality == CANONICAL_SKIN_SETTINGS["quality"]
        and reconstructor.settings.landmark_backend == "mediapipe"
        and str(reconstructor.device) == CANONICAL_SKIN_SETTINGS["device"])
    rec = Reconstructor(ReconstructSettings(**CANONICAL_SKIN_SETTINGS)) if own else reconstructor
    photo = np.ascontiguousarray(data.astronaut())
    try:
        res = rec.run(photo)
    finally:
        if own:
            rec.close()
    # Her suit collar stays on the neck (below every landmark): the synthetic truths of the
    # tests and the evaluation were defined on the skin before clothing was filled.
    tex = extract_texture(photo, posed_vertices(res, rec.model), res.intrinsics, rec.model,
                          size=res.texture.shape[0], neck_occluders=False)[0]
    if tex.shape[0] != size:
        tex = np.asarray(Image.fromarray(tex).resize((size, size), Image.LANCZOS))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(tex).save(tmp)
    tmp.replace(path)
    for old in path.parent.glob(f"astronaut_skin_{size}*.png"):   # earlier builds' copies
        if old != path and not old.name.endswith(".tmp.png"):
            old.unlink(missing_ok=True)
    return tex
