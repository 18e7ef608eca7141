"""Photo -> face texture in the ICT UV layout.

Layout: the ICT mesh uses UV tiles (u in [k, k+1] per material). The texture made here is the
`M_Face` tile, u in [0, 1]; the other skin tile (`M_BackHead`: scalp, neck, mouth socket) gets
a flat skin colour in the material. Rows are top-down with the top row at v = 1 (the PNG
convention: a PNG written from this array and loaded in Blender maps correctly with the mesh's
UVs; no flip is needed).

Per texel: the 3D point on the posed mesh (UV-space raster + barycentrics), its projection into
the photo, visibility by a depth test against an image-space z-buffer of the posed mesh, and a
weight that falls off with the angle between the surface normal and the view direction and
feathers towards visibility edges. The side turned away from the camera is filled from the
mirrored texel (the model's vertex symmetry map, interpolated to UVs); what neither side saw is
filled by pull-push interpolation, which ends in the median skin colour of the seen face, so
nothing is black. On the neck, what is not skin (a collar, a scarf, a shirt) counts as unseen:
its colour is far from the face's own skin chromaticity or far darker, so it is filled like a
hidden texel instead of being painted onto the skin.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .errors import HiFaceError
from .geometry import vertex_normals
from .model_data import NARROW_FACE_STOP, PARTS
from .raster import rasterize, rasterize_uv

# Parts that are see-through or sit on top of the skin: never occluders for the depth test.
NON_OCCLUDERS = ("lacrimal_l", "lacrimal_r", "eye_blend_l", "eye_blend_r",
                 "eye_occlusion_l", "eye_occlusion_r", "eyelashes_l", "eyelashes_r")
OCCLUDER_MAX_SIDE = 640     # image-space z-buffer resolution (depth test only)
COS_MIN = 0.15              # below this grazing angle a texel takes nothing from the photo
SEEN_WEIGHT = 0.25          # direct weight above which a texel counts as "seen" in the mask
NECK_BELOW_CHIN_CM = 0.5    # texels this far below the chin (neutral model) are the neck
# Not skin: less saturated than the face's skin by this many robust deviations (twice as many
# off its hue), or darker than this fraction of its median luminance.
SKIN_CHROMA_SIGMAS = 4.0
SKIN_MIN_LUMINANCE = 0.3

MP_CHIN = 152               # MediaPipe landmark at the bottom of the chin

_UV_CACHE: dict = {}


def _part_ids(names) -> list[int]:
    return [i for i, p in enumerate(PARTS) if p[0] in names]


def face_triangles(model) -> np.ndarray:
    """Indices of the triangles textured by the face image (material M_Face)."""
    names = [str(n) for n in model.material_names]
    if "M_Face" in names and hasattr(model, "tri_poly"):
        mat = np.asarray(model.poly_material)[np.asarray(model.tri_poly)]
        sel = np.nonzero(mat == names.index("M_Face"))[0]
        if len(sel):
            return sel
    # Without material data: the face part's triangles whose UVs lie in the first tile.
    uv = np.asarray(model.uvs)[np.asarray(model.tri_uv)]
    face = np.isin(np.asarray(model.vertex_part)[np.asarray(model.tris)[:, 0]], _part_ids(("face",)))
    return np.nonzero(face & (uv[..., 0].max(1) <= 1.0))[0]


def _uv_key(model, size: int, tris: np.ndarray) -> tuple:
    tri_uv = np.asarray(model.tri_uv)[tris]
    return (size, hashlib.blake2b(tri_uv.tobytes() + np.asarray(model.uvs).tobytes(),
                                  digest_size=16).digest())


def _cache_put(key, value):
    if len(_UV_CACHE) > 8:
        _UV_CACHE.clear()
    _UV_CACHE[key] = value
    return value


def uv_raster(model, size: int):
    """(tri index into model.tris or -1, barycentrics) per texel; cached per model and size."""
    tris = face_triangles(model)
    key = _uv_key(model, size, tris)
    hit = _UV_CACHE.get(key)
    if hit is None:
        tid, bary = rasterize_uv(model.uvs, np.asarray(model.tri_uv)[tris], size)
        tid = np.where(tid >= 0, tris[np.maximum(tid, 0)], -1).astype(np.int32)
        hit = _cache_put(key, (tid, bary))
    return hit


def uv_interpolation(model, size: int):
    """Sparse (size * size, n UVs) matrix: values per UV vertex -> barycentric value per texel
    (row = flat texel index; unused texels are empty rows, so 0). A sparse product is several
    times faster than gathering the corners of a million texels. Cached with the UV raster up to
    1024 texels (25 MB); a 4096 one would keep 400 MB for a rare size."""
    from scipy import sparse

    key = ("interpolation",) + _uv_key(model, size, face_triangles(model))
    hit = _UV_CACHE.get(key)
    if hit is None:
        tid, bary = uv_raster(model, size)
        rows = np.flatnonzero(tid >= 0)
        cols = np.asarray(model.tri_uv)[tid.ravel()[rows]]
        vals = bary.reshape(-1, 3)[rows].astype(np.float32)
        hit = sparse.csr_matrix((vals.ravel(), (np.repeat(rows, 3), cols.ravel())),
                                shape=(size * size, len(model.uvs)))
        if size <= 1024:
            _cache_put(key, hit)
    return hit


def mirror_maps(model, size: int):
    """cv2.remap maps from each texel to its mirror texel (-1 where unknown); pose-independent,
    cached with the UV raster."""
    tid, bary = uv_raster(model, size)
    key = ("mirror", size, hashlib.blake2b(np.asarray(model.mirror).tobytes() + tid.tobytes()[:4096],
                                          digest_size=16).digest())
    hit = _UV_CACHE.get(key)
    if hit is None:
        used = tid >= 0
        corners = np.asarray(model.tris)[tid[used]]
        muv = _lerp(vertex_uvs(model), np.asarray(model.mirror)[corners], bary[used])
        ok = np.isfinite(muv).all(1)
        mx = np.full((size, size), -1.0, np.float32)
        my = np.full((size, size), -1.0, np.float32)
        mx[used] = np.where(ok, muv[:, 0] * size - 0.5, -1.0)
        my[used] = np.where(ok, (1.0 - muv[:, 1]) * size - 0.5, -1.0)
        hit = _cache_put(key, (mx, my))
    return hit


def vertex_uvs(model) -> np.ndarray:
    """One UV per vertex (the first polygon corner using it); for the mirror lookup."""
    vert_uv = np.full((len(model.neutral), 2), np.nan, np.float32)
    tris, tri_uv = np.asarray(model.tris).ravel(), np.asarray(model.tri_uv).ravel()
    vert_uv[tris[::-1]] = np.asarray(model.uvs)[tri_uv[::-1]]
    return vert_uv


def _lerp(values: np.ndarray, corners: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex values, written out (a tiny-axis sum is slow)."""
    return (values[corners[:, 0]] * b[:, 0:1] + values[corners[:, 1]] * b[:, 1:2]
            + values[corners[:, 2]] * b[:, 2:3])


def extract_texture(rgb, verts_cam_mm, K, model, size: int = 1024, neck_occluders: bool = True):
    """Unwrap the photo onto the face UV tile.

    rgb: (H, W, 3) uint8 photo. verts_cam_mm: (V, 3) posed mesh in the photo's OpenCV camera
    frame (x right, y down, z forward), mm. K: (3, 3) intrinsics, pixel coordinates with the
    image spanning [0, W] x [0, H] (the landmark convention). model: the face model data.
    neck_occluders: treat what is not skin on the neck (clothing) as unseen.
    Returns (texture (size, size, 3) uint8, mask (size, size) uint8: 255 where the photo itself
    was seen well, 0 where mirrored or filled).
    """
    import cv2

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise HiFaceError(f"Texture extraction needs an RGB uint8 photo, got {rgb.dtype} {rgb.shape}")
    V = np.asarray(verts_cam_mm, np.float64)
    K = np.asarray(K, np.float64)
    tris = np.asarray(model.tris)
    if not np.isfinite(V).all() or (V[:, 2] <= 0).mean() > 0.01:
        raise HiFaceError("The fitted head is not in front of the camera; cannot texture it")
    H, W = rgb.shape[:2]

    # -- texel -> surface point, normal, projection -----------------------------------------
    tid, bary = uv_raster(model, size)
    used = tid >= 0
    t = tid[used]
    b = bary[used]
    corners = tris[t]                                            # (n, 3)
    V32 = V.astype(np.float32)
    P = _lerp(V32, corners, b)                                   # (n, 3) mm
    N = _lerp(vertex_normals(V, tris).astype(np.float32), corners, b)
    # cos of the angle between the normal and the direction to the camera (at the origin).
    cos = -np.einsum("ij,ij->i", N, P) / np.sqrt(
        np.einsum("ij,ij->i", N, N) * np.einsum("ij,ij->i", P, P) + 1e-20)
    proj = P @ K.T.astype(np.float32)
    px, py = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]

    # -- visibility: depth test against the posed mesh seen from the camera -----------------
    s = min(1.0, OCCLUDER_MAX_SIDE / max(H, W))
    hz, wz = max(1, round(H * s)), max(1, round(W * s))
    occ = ~np.isin(np.asarray(model.vertex_part)[tris], _part_ids(NON_OCCLUDERS)).any(1)
    Vp = V @ K.T
    vz = np.stack([Vp[:, 0] / Vp[:, 2] * s, Vp[:, 1] / Vp[:, 2] * s, V[:, 2]], 1)
    zr = rasterize(vz, tris[occ], hz, wz, perspective=True)
    zbuf = zr.depth
    # The farthest surface within one pixel: a texel sampled a pixel off at a grazing angle or
    # next to a silhouette must not fail the test by aliasing (the result would be speckled).
    # Background counts as nearest (0), so it never makes a texel visible by itself.
    zfar = cv2.dilate(np.where(np.isfinite(zbuf), zbuf, 0.0).astype(np.float32), np.ones((3, 3)))
    zi = np.clip((py * s).astype(np.int64), 0, hz - 1)
    zj = np.clip((px * s).astype(np.int64), 0, wz - 1)
    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    # Tolerance: a couple of millimetres plus the depth change across a z-buffer pixel.
    footprint = P[:, 2] / (K[0, 0] * s)
    tol = 2.0 + 1.5 * footprint / np.maximum(cos, 0.2)
    visible = inside & (cos > COS_MIN) & (P[:, 2] <= zfar[zi, zj] + tol)

    w = np.clip((cos - COS_MIN) / (1.0 - COS_MIN), 0.0, 1.0) ** 1.5
    w = np.where(visible, w, 0.0).astype(np.float32)

    # -- colour from the photo ----------------------------------------------------------------
    wmap = np.zeros((size, size), np.float32)
    wmap[used] = w
    mapx = np.full((size, size), -1.0, np.float32)
    mapy = np.full((size, size), -1.0, np.float32)
    mapx[used] = px - 0.5           # cv2.remap samples pixel centres at integer coordinates
    mapy[used] = py - 0.5
    colour = cv2.remap(rgb, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    colour = colour.astype(np.float32)
    if neck_occluders:   # before the feather, so that fills blend in at clothing edges too
        neck, face = neck_and_face_texels(model, size)
        wmap *= neck_skin(colour, wmap, neck, face)

    # Feather: weights fade to zero over a few texels towards every visibility edge.
    # Texels outside the UV islands are not edges: islands end at seams, not at occlusions.
    vis = ((wmap > 0) | ~used).astype(np.uint8)
    feather = max(2, size // 256)
    dist = cv2.distanceTransform(vis, cv2.DIST_L2, 3)
    fade = np.clip(dist / feather, 0.0, 1.0)
    wmap *= fade

    # -- mirror fill ---------------------------------------------------------------------------
    mx, my = mirror_maps(model, size)
    pre = np.empty((size, size, 4), np.float32)                  # premultiplied colour
    np.multiply(colour, wmap[..., None], out=pre[..., :3])
    pre[..., 3] = wmap
    mpre = cv2.remap(pre, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mw = mpre[..., 3]
    # The texel's own view wins where it is good; the mirror takes over as it fades:
    # colour = (a c + (1 - a) mw c_m) / (a + (1 - a) mw), with mw c_m = mpre[..., :3].
    a = wmap
    one_minus = 1.0 - a
    total = a + mw * one_minus
    acc = pre[..., :3] + mpre[..., :3] * one_minus[..., None]
    acc /= np.maximum(total, 1e-6)[..., None]
    total[~used] = 0.0

    # -- fill the rest: pull-push towards the median skin colour ------------------------------
    seen = total > 0.05
    skin = skin_colour(acc, seen & (a > SEEN_WEIGHT))
    filled = pull_push(acc, np.where(seen, np.minimum(total, 1.0), 0.0).astype(np.float32), skin)
    out = np.clip(np.round(filled), 0, 255).astype(np.uint8)
    mask = np.where(used & (a > SEEN_WEIGHT), 255, 0).astype(np.uint8)
    return out, mask


def neck_texels(model, tid: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(S, S) bool: texels of the neck, below the chin of the neutral model."""
    used = tid >= 0
    y = np.full(tid.shape, np.inf, np.float32)
    y[used] = _lerp(np.asarray(model.neutral, np.float32), np.asarray(model.tris)[tid[used]],
                    bary[used])[:, 1]
    chin = model.landmark_skin_points(model.neutral, [MP_CHIN])[0]
    return y < chin[1] - NECK_BELOW_CHIN_CM


def narrow_face_texels(model, tid: np.ndarray) -> np.ndarray:
    """(S, S) bool: texels of the inner face (the part whose skin colour is trusted)."""
    return (tid >= 0) & (np.asarray(model.tris)[np.maximum(tid, 0), 0] < NARROW_FACE_STOP)


def neck_and_face_texels(model, size: int):
    """(neck, inner face off the neck) texel masks; pose-independent, cached with the UV raster."""
    tid, bary = uv_raster(model, size)
    key = ("neck", size, hashlib.blake2b(np.asarray(model.neutral).tobytes() + tid.tobytes()[:4096],
                                         digest_size=16).digest())
    hit = _UV_CACHE.get(key)
    if hit is None:
        neck = neck_texels(model, tid, bary)
        hit = _cache_put(key, (neck, narrow_face_texels(model, tid) & ~neck))
    return hit


def neck_skin(colour: np.ndarray, weight: np.ndarray, neck: np.ndarray, face: np.ndarray) -> np.ndarray:
    """(S, S) float32 in [0, 1]: 0 on neck texels whose colour is not the face's skin, 1 elsewhere.
    colour: sampled photo colour; weight: how well each texel was seen."""
    import cv2

    ref = face & (weight > SEEN_WEIGHT)
    if ref.sum() < 100 or not (neck & (weight > 0)).any():
        return np.ones(weight.shape, np.float32)
    lum = colour @ np.array([0.299, 0.587, 0.114], np.float32)
    lo, hi = np.percentile(lum[ref], [20, 90])
    ref &= (lum >= lo) & (lum <= hi)              # skin, not brows, eyes or highlights
    logc = np.log(colour + 1.0)
    chroma = np.stack([logc[..., 0] - logc[..., 1], logc[..., 2] - logc[..., 1]], -1)
    # Skin in shadow grows more saturated along its own hue; cloth is greyer (black, white,
    # denim) or of another hue. So: saturation along the skin's hue, and the hue deviation.
    centre = np.median(chroma[ref], 0)
    hue = centre / max(float(np.linalg.norm(centre)), 1e-3)
    sat = chroma @ hue
    off = chroma @ np.array([-hue[1], hue[0]], np.float32)
    sat0, off0 = float(np.median(sat[ref])), float(np.median(off[ref]))
    sat_sd = 1.4826 * float(np.median(np.abs(sat[ref] - sat0))) + 0.01
    off_sd = 1.4826 * float(np.median(np.abs(off[ref] - off0))) + 0.01
    other = neck & (weight > 0) & ((sat < sat0 - SKIN_CHROMA_SIGMAS * sat_sd)
                                   | (np.abs(off - off0) > 2 * SKIN_CHROMA_SIGMAS * off_sd)
                                   | (lum < SKIN_MIN_LUMINANCE * np.median(lum[ref])))
    # Whole regions, not specks; and their rims, which blend the two colours.
    def disc(d):
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, int(d * weight.shape[0])) | 1,) * 2)
    other = cv2.morphologyEx(other.astype(np.uint8), cv2.MORPH_OPEN, disc(1 / 512))
    other = cv2.dilate(other, disc(1 / 64)).astype(bool) & neck
    return np.where(other, 0.0, 1.0).astype(np.float32)


def skin_colour(colour: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Median colour of the seen texels, ignoring the darkest and brightest (brows, eyes,
    highlights). Falls back to a neutral skin tone if too little was seen."""
    c = colour[seen]
    if len(c) < 100:
        return np.array([180.0, 140.0, 120.0], np.float32)
    lum = c @ np.array([0.299, 0.587, 0.114])
    lo, hi = np.percentile(lum, [20, 90])
    c = c[(lum >= lo) & (lum <= hi)]
    return np.median(c, axis=0).astype(np.float32)


def pull_push(colour: np.ndarray, weight: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Fill low-weight texels from their surroundings: average down a weighted pyramid (pull),
    then fill each level from the coarser one where its own weight is short (push). The
    coarsest level is the base colour, so regions far from anything seen become skin."""
    import cv2

    colour = colour.astype(np.float32)
    weight = weight.astype(np.float32)
    levels = [(colour * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 4:
        c, w = levels[-1]
        h2, w2 = (c.shape[0] + 1) // 2, (c.shape[1] + 1) // 2
        levels.append((cv2.resize(c, (w2, h2), interpolation=cv2.INTER_AREA),
                       cv2.resize(w, (w2, h2), interpolation=cv2.INTER_AREA)))
    c, w = levels[-1]
    wc = np.minimum(w, 1.0)[..., None]
    cur = (c + base.astype(np.float32) * (1.0 - wc)) / (w[..., None] + (1.0 - wc))
    for c, w in reversed(levels[:-1]):
        up = cv2.resize(cur, (c.shape[1], c.shape[0]), interpolation=cv2.INTER_LINEAR)
        # own colour c / w where the level has enough weight, the coarser fill elsewhere:
        # c/w * min(w, 1) + up * (1 - min(w, 1)) == c / max(w, 1) + up * (1 - min(w, 1)).
        wc = np.minimum(w, 1.0)
        cur = c / np.maximum(w, 1.0)[..., None]
        cur += up * (1.0 - wc)[..., None]
    return cur
