"""Fine detail from the photo: a static displacement map by shape from shading, and the dynamic
(compressed / stretched) maps an expression blends in.

All maps are in the ICT face UV tile, row 0 = v 1 (like the texture), values in metres along the
outward surface normal. The static map is the person's relief; `compressed` and `stretched` are
offsets *added* to it at full compression / full stretch (the rig scales them by the live
tension weights), so Dynamic Detail 0 leaves exactly the static relief.

Static detail
-------------
Per texel: the point and normal of the fitted (coarse) mesh and its projection into the photo.
The photo is decoded to linear light, an ambient + one distant light is fitted to the coarse
normals (constant and mirror-symmetric albedo) and written as SH lighting over the face's
normals (under soft, even light, where no direction is well determined, a nine-term SH fit
instead), and the shading is divided out. What remains in the log of that ratio, high-passed at a
few millimetres, is pigment plus the shading of relief the coarse mesh lacks. Pigment changes the
colour's chromaticity (melanin, blood, hair) while shading under white-ish light does not, so the
part of the log luminance predicted by the high-passed chromaticity (a per-person linear fit) is
removed, and strongly coloured or very dark texels (brows, lips, moles) get little weight.

The relative shading residual r is linearised around the coarse normal n0: displacing the
surface by d along n0 tilts the normal by minus its surface gradient, so
    r = log S(n) - log S(n0) ~ -(dS/dn . grad_s d) / S = -c . grad_uv d,
with c = (J^T J)^-1 J^T dS/dn / S and J the 3x2 Jacobian of the surface w.r.t. texel
coordinates. Least squares with a gradient (membrane) regulariser and a weak screening term
(removing what the coarse fit owns) is solved in torch, in the Fourier domain with c locally
constant (optionally refined by conjugate gradients). Only the derivative along the light's
tangential direction is observed in one photo; the regulariser picks the smoothest relief in the
other direction. The regularised solution keeps the relief's shape but shrinks it, so it is then
scaled by the one gain that best explains the residual (`relief_gain`).

Texels the photo did not see get the mirrored texel's relief (the model's vertex symmetry), and
what neither side saw gets noise with the power spectrum of the person's own seen relief, so
there are no flat holes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .geometry import vertex_normals
from .lighting import directional_sh, estimate_directional, estimate_sh, sh_gradient, sh_shading
from .texture import _lerp, face_triangles, mirror_maps, uv_interpolation, uv_raster

SIZES = (512, 1024, 2048, 4096)
MIN_SKIN_TEXELS = 100    # fewer well-seen texels than this: no per-person statistics
PLAUSIBLE_SHADING = 5.0   # robust sigmas of the fine shading beyond which a texel is an outlier
MIN_LIGHT_CONTRAST = 0.3  # diffuse / (ambient + diffuse) below which the one-light fit is not used


@dataclass
class DetailSettings:
    size: int = 1024                 # map side in texels (512 ... 4096)
    highpass_mm: float = 2.5         # Gaussian sigma splitting detail from the coarse fit
    smoothness: float = 0.05         # membrane weight relative to the median data weight
    iterations: int = 0              # conjugate-gradient steps after the Fourier solve
    wrinkle_wavelength_mm: float = 4.0
    wrinkle_depth_m: tuple = (3e-4, 1e-3)   # clamp of the person's expression-fold depth (0.3-1 mm)
    stretch_attenuation: float = 0.6        # share of the fine detail a full stretch removes
    device: object = "cpu"
    seed: int = 0


@dataclass
class DetailMaps:
    static: np.ndarray         # (S, S) float32 metres
    compressed: np.ndarray     # (S, S) float32 metres, added at full compression
    stretched: np.ndarray      # (S, S) float32 metres, added at full stretch
    seen: np.ndarray           # (S, S) float32 0..1, weight of the photo's own data
    lighting: np.ndarray       # (9,) grey SH coefficients in the camera frame, linear light
    metres_per_texel: float    # median over the face tile (neutral mesh)
    report: dict = field(default_factory=dict)


# -- per-texel geometry ----------------------------------------------------------------------

@dataclass
class TexelGeometry:
    size: int
    used: np.ndarray       # (S, S) bool: texel on the face tile
    index: np.ndarray      # (n,) flat indices of the used texels worked on (see texel_geometry)
    tri: np.ndarray        # (n,) triangle of each used texel (index into model.tris)
    bary: np.ndarray       # (n, 3)
    points: np.ndarray     # (n, 3) posed surface point, camera frame, mm
    normals: np.ndarray    # (n, 3) unit coarse normal, camera frame
    pinv_jac: np.ndarray   # (n, 2, 3) (J^T J)^-1 J^T, J = d(point, metres) / d(col, row)
    metres_per_texel: float


def texel_jacobians(verts: np.ndarray, uvs: np.ndarray, tris: np.ndarray, tri_uv: np.ndarray,
                    size: int) -> np.ndarray:
    """(T, 3, 2) d(vertex position) / d(texel column, texel row) per triangle (0 if degenerate)."""
    X = verts[tris].astype(np.float64)
    U = uvs[tri_uv].astype(np.float64)
    E = np.stack([X[:, 1] - X[:, 0], X[:, 2] - X[:, 0]], -1)                       # (T, 3, 2)
    D = np.stack([np.stack([U[:, 1, 0] - U[:, 0, 0], U[:, 2, 0] - U[:, 0, 0]], -1) * size,
                  -np.stack([U[:, 1, 1] - U[:, 0, 1], U[:, 2, 1] - U[:, 0, 1]], -1) * size], 1)
    det = D[:, 0, 0] * D[:, 1, 1] - D[:, 0, 1] * D[:, 1, 0]
    ok = np.abs(det) > 1e-9
    inv = np.zeros_like(D)
    inv[:, 0, 0], inv[:, 1, 1] = D[:, 1, 1], D[:, 0, 0]
    inv[:, 0, 1], inv[:, 1, 0] = -D[:, 0, 1], -D[:, 1, 0]
    inv[ok] /= det[ok, None, None]
    inv[~ok] = 0.0
    return E @ inv


def _pinv(J: np.ndarray) -> np.ndarray:
    G = np.einsum("tci,tcj->tij", J, J)
    det = G[:, 0, 0] * G[:, 1, 1] - G[:, 0, 1] ** 2
    ok = det > 1e-30
    Gi = np.stack([np.stack([G[:, 1, 1], -G[:, 0, 1]], -1), np.stack([-G[:, 1, 0], G[:, 0, 0]], -1)], 1)
    Gi[ok] /= det[ok, None, None]
    Gi[~ok] = 0.0
    return Gi @ J.transpose(0, 2, 1)


def metres_per_texel(model, size: int, neutral_cm: np.ndarray | None = None) -> float:
    """Median side of a texel on the face surface, metres (ICT neutral is in cm)."""
    ft = face_triangles(model)
    v = (model.neutral if neutral_cm is None else neutral_cm) * 0.01
    J = texel_jacobians(v, model.uvs, model.tris[ft], model.tri_uv[ft], size)
    area = np.linalg.norm(np.cross(J[:, :, 0], J[:, :, 1]), axis=1)
    return float(np.sqrt(np.median(area[area > 0])))


def texel_geometry(model, verts_cam_mm: np.ndarray, size: int,
                   keep: np.ndarray | None = None) -> TexelGeometry:
    """Per-texel surface point, normal and Jacobian of the posed mesh. keep (S, S) bool: work
    only on these used texels (the photo sees about a third of the tile, and every per-texel
    array costs by its length); the texel size is still the whole tile's."""
    tid, bary = uv_raster(model, size)
    used = tid >= 0
    tris = np.asarray(model.tris)
    # np.unique without the sort: triangle ids are small integers.
    present = np.bincount(tid[used], minlength=len(tris)) > 0
    index = np.flatnonzero(used if keep is None else used & keep)
    t = tid.ravel()[index]
    b = bary.reshape(-1, 3)[index]
    V = np.asarray(verts_cam_mm, np.float32)
    corners = tris[t]
    P = _lerp(V, corners, b)
    N = _lerp(vertex_normals(V.astype(np.float64), tris).astype(np.float32), corners, b)
    N /= np.maximum(np.linalg.norm(N, axis=1, keepdims=True), 1e-9)
    ft = np.flatnonzero(present)
    remap = np.cumsum(present) - 1
    J = texel_jacobians(V.astype(np.float64) * 1e-3, model.uvs, tris[ft], model.tri_uv[ft], size)
    M = _pinv(J).astype(np.float32)[remap[t]]
    area = np.linalg.norm(np.cross(J[:, :, 0], J[:, :, 1]), axis=1)
    mpt = float(np.sqrt(np.median(area[area > 0])))
    return TexelGeometry(size, used, index, t, b, P, N, M, mpt)


# -- small image helpers ----------------------------------------------------------------------

def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(img, (k, k), sigma, borderType=cv2.BORDER_REPLICATE)


def weighted_blur(img: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Normalised convolution: the weighted local mean (texels of weight 0 do not count)."""
    w = weight.astype(np.float32)
    num = _blur(img * (w if img.ndim == 2 else w[..., None]), sigma)
    den = _blur(w, sigma)
    den = np.maximum(den, 1e-6)
    return num / (den if img.ndim == 2 else den[..., None])


def _scatter(geo: TexelGeometry, values: np.ndarray, fill=0.0) -> np.ndarray:
    out = np.full((geo.size * geo.size,) + values.shape[1:], fill, np.float32)
    out[geo.index] = values
    return out.reshape((geo.size, geo.size) + values.shape[1:])


# -- the solver ---------------------------------------------------------------------------------

def solve_displacement(r: np.ndarray, c: np.ndarray, weight: np.ndarray, used: np.ndarray,
                       smoothness: float, screen: float, iterations: int, device="cpu",
                       x0: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """argmin_d sum w (c . grad d + r)^2 + lam |grad d|^2 + mu d^2 on a texel grid.

    r (S, S) relative shading residual; c (S, S, 2) coefficients for (d/dcol, d/drow) with d in
    texel units (central differences); weight (S, S) data weight, 0 where any 4-neighbour is off
    the tile; used (S, S) bool, membrane edges only between used texels so UV islands do not
    pull on each other. lam = smoothness * median data weight, mu = lam * screen.
    Returns (d (S, S) in texel units, info)."""
    import torch

    dev = torch.device(device)
    f32 = torch.float32
    W = torch.from_numpy(np.ascontiguousarray(weight, np.float32)).to(dev)
    cx = torch.from_numpy(np.ascontiguousarray(c[..., 0], np.float32)).to(dev)
    cy = torch.from_numpy(np.ascontiguousarray(c[..., 1], np.float32)).to(dev)
    R = torch.from_numpy(np.ascontiguousarray(r, np.float32)).to(dev)
    u = torch.from_numpy(used).to(dev)
    ex = (u[:, 1:] & u[:, :-1]).to(f32)
    ey = (u[1:, :] & u[:-1, :]).to(f32)
    wc2 = weight * (c ** 2).sum(-1)
    lam = float(smoothness * max(np.median(wc2[weight > 0]) if (weight > 0).any() else 1.0, 1e-8))
    mu = lam * screen
    Wcx, Wcy = W * cx, W * cy

    def dx(d):    # central difference along columns, zero outside
        o = torch.zeros_like(d)
        o[:, 1:-1] = 0.5 * (d[:, 2:] - d[:, :-2])
        return o

    def dy(d):
        o = torch.zeros_like(d)
        o[1:-1, :] = 0.5 * (d[2:, :] - d[:-2, :])
        return o

    def membrane(d):
        gx = (d[:, 1:] - d[:, :-1]) * ex
        gy = (d[1:, :] - d[:-1, :]) * ey
        o = mu * d
        o[:, 1:] += lam * gx
        o[:, :-1] -= lam * gx
        o[1:, :] += lam * gy
        o[:-1, :] -= lam * gy
        return o

    def A(d):
        t = cx * dx(d) + cy * dy(d)
        # Central differences are anti-self-adjoint with zero borders: D^T = -D.
        return membrane(d) - dx(Wcx * t) - dy(Wcy * t)

    b = dx(Wcx * R) + dy(Wcy * R)           # -D^T (W c r)
    deg = torch.zeros_like(W)
    deg[:, 1:] += ex
    deg[:, :-1] += ex
    deg[1:, :] += ey
    deg[:-1, :] += ey
    Minv = 1.0 / (0.5 * W * (cx * cx + cy * cy) + lam * deg + mu)
    x = torch.zeros_like(R) if x0 is None else torch.from_numpy(x0.astype(np.float32)).to(dev)
    res = b - A(x)
    z = Minv * res
    p = z.clone()
    rz = torch.sum(res * z)
    b_norm = float(torch.linalg.vector_norm(b)) + 1e-30
    it = 0
    for it in range(1, iterations + 1):
        Ap = A(p)
        alpha = rz / torch.sum(p * Ap)
        x += alpha * p
        res -= alpha * Ap
        z = Minv * res
        rz_new = torch.sum(res * z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    rel = float(torch.linalg.vector_norm(res)) / b_norm
    return x.cpu().numpy(), {"iterations": it, "relative_residual": rel, "lambda": lam, "mu": mu}


def solve_directional(r: np.ndarray, c: np.ndarray, weight: np.ndarray, smoothness: float,
                      screen: float, n_bins: int = 16, device="cpu") -> np.ndarray:
    """The same least squares with c locally constant, solved in the Fourier domain.

    Dividing by |c| leaves -c_hat . grad d = r / |c|: per frequency k a scalar equation
    i (c_hat . k) D = -R, regularised by smoothness |k|^2 + screen. c_hat's angle varies slowly
    over the face (one light, smooth normals), so the map is solved for n_bins fixed directions
    over [0, pi) in one batched FFT and each texel blends the two solutions of the directions
    nearest its own (the opposite direction is the negated solution). Texels of low weight
    contribute no data (their residual is zeroed, as if the shading there were flat)."""
    import torch

    dev = torch.device(device)
    mag = np.hypot(c[..., 0], c[..., 1])
    # r / |c| is the directional slope, but where the light grazes the tangent plane little
    # (|c| small) it is mostly noise: damp it like a pointwise Wiener estimate.
    c0 = 0.35 * float(np.median(mag[weight > 0.5])) if (weight > 0.5).any() else 1.0
    rn = (r * weight * mag / (mag * mag + c0 * c0)).astype(np.float32)
    h, w = rn.shape
    R = torch.fft.rfft2(torch.from_numpy(rn).to(dev))
    wy = 2 * np.pi * torch.fft.fftfreq(h, device=dev)[:, None]
    wx = 2 * np.pi * torch.fft.rfftfreq(w, device=dev)[None, :]
    sx, sy = torch.sin(wx), torch.sin(wy)              # central differences: i sin(omega)
    lap = 4 * torch.sin(wx / 2) ** 2 + 4 * torch.sin(wy / 2) ** 2
    damp = smoothness * lap + smoothness * screen
    theta = np.arctan2(c[..., 1], c[..., 0])
    pos = np.mod(theta, np.pi) / (np.pi / n_bins)
    sign = np.where(np.mod(theta, 2 * np.pi) >= np.pi, -1.0, 1.0).astype(np.float32)
    j0 = np.floor(pos).astype(np.int64) % n_bins
    f = (pos - np.floor(pos)).astype(np.float32)
    j1 = (j0 + 1) % n_bins
    s1 = np.where(j1 == 0, -1.0, 1.0).astype(np.float32)      # wrapping past pi flips the sign
    w0, w1 = 1 - f, f * s1
    # One direction at a time: a texel takes (1 - f) of its lower bin and f of the next, so the
    # map is accumulated bin by bin instead of holding all n_bins solutions (the peak memory of
    # large maps).
    out = np.zeros((h, w), np.float32)
    angles = torch.arange(n_bins, device=dev, dtype=torch.float32) * (np.pi / n_bins)
    for j in range(n_bins):
        a = torch.cos(angles[j]) * sx + torch.sin(angles[j]) * sy
        sol = torch.fft.irfft2((1j * a) * R / (a * a + damp), s=(h, w)).cpu().numpy()
        lo, hi = j0 == j, j1 == j
        out[lo] += w0[lo] * sol[lo]
        out[hi] += w1[hi] * sol[hi]
    return (out * sign).astype(np.float32)


def relief_gain(d: np.ndarray, r: np.ndarray, c: np.ndarray, weight: np.ndarray) -> float:
    """The scale of a regularised relief d (texel units) that best explains the residual it
    models: argmin_g sum w (g c . grad d + r)^2. The smoothness prior and the damping of weak
    slopes shrink every band of the solution; its shape is kept and its amplitude brought back to
    what the shading says. 1 where the relief predicts no shading."""
    gx = np.zeros_like(d)
    gy = np.zeros_like(d)
    gx[:, 1:-1] = 0.5 * (d[:, 2:] - d[:, :-2])
    gy[1:-1, :] = 0.5 * (d[2:, :] - d[:-2, :])
    pred = c[..., 0] * gx + c[..., 1] * gy
    den = float(np.sum(weight * pred * pred))
    gain = -float(np.sum(weight * pred * r)) / den if den > 0 else 1.0
    return gain if np.isfinite(gain) and gain > 0 else 1.0


def log_colour_split(h: np.ndarray):
    """Log RGB (..., 3) -> (log luminance (...), opponent chromaticity (..., 2)): the mean of the
    three logs, and the red-green and yellow-blue differences (a grey light moves only the mean)."""
    chroma = np.stack([(h[..., 0] - h[..., 1]) / np.sqrt(2),
                       (h[..., 0] + h[..., 1] - 2 * h[..., 2]) / np.sqrt(6)], -1)
    return h.mean(-1), chroma


def highpass_colour(logq_g: np.ndarray, mean_weight: np.ndarray, sigma: float, geo: TexelGeometry):
    """High-pass of the log shading-free colour against the weighted local mean (weights
    mean_weight (S, S)), per used texel: (log luminance (n,), chromaticity (n, 2))."""
    h = logq_g - weighted_blur(logq_g, mean_weight, sigma)
    return log_colour_split(h.reshape(-1, 3)[geo.index])


def chroma_scale(chroma: np.ndarray, sel: np.ndarray) -> float:
    """Robust scale of the skin's chromaticity variation over the texels sel."""
    if sel.sum() <= MIN_SKIN_TEXELS:
        return 1.0
    return float(1.4826 * np.median(np.hypot(chroma[sel, 0], chroma[sel, 1])) + 1e-6)


def uncoloured(chroma: np.ndarray, sig_c: float) -> np.ndarray:
    """~1 where the colour is the skin's, ~0 where it is strongly coloured (pigment, hair)."""
    return np.exp(-0.5 * (np.hypot(chroma[:, 0], chroma[:, 1]) / (2.5 * sig_c)) ** 2)


# -- static detail ------------------------------------------------------------------------------

def static_detail(rgb: np.ndarray, verts_cam_mm: np.ndarray, K: np.ndarray, model,
                  seen_mask: np.ndarray | None, settings: DetailSettings | None = None):
    """Shape from shading of the photo on the fitted mesh. Returns (static metres, seen weight,
    SH coefficients, geometry, info)."""
    import cv2

    s = settings or DetailSettings()
    size = int(s.size)
    info: dict = {}
    t0 = time.perf_counter()
    # Visibility: the texture's mask (depth test and grazing angle), feathered, times the cosine
    # to the camera (foreshortened texels are blurred by the photo's pixels).
    if seen_mask is None:
        vis = np.ones((size, size), np.float32)
    else:
        vis = cv2.resize((np.asarray(seen_mask) > 0).astype(np.uint8), (size, size),
                         interpolation=cv2.INTER_NEAREST).astype(np.float32)
    feather = max(2.0, size / 128)
    # Unseen texels carry no data weight; the margin keeps the neighbours that the erosions and
    # the coefficients' blur below read beside the seen ones.
    margin = int(np.ceil(feather)) + 8
    keep = cv2.dilate((vis > 0).astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
    vis = np.clip(cv2.distanceTransform((vis > 0).astype(np.uint8), cv2.DIST_L2, 3) / feather, 0, 1)
    geo = texel_geometry(model, verts_cam_mm, size, keep)
    P, N = geo.points, geo.normals
    K = np.asarray(K, np.float32)
    proj = P @ K.T
    px, py = proj[:, 0] / proj[:, 2], proj[:, 1] / proj[:, 2]
    H, W = rgb.shape[:2]
    cos = -np.einsum("ij,ij->i", N, P) / np.maximum(np.linalg.norm(P, axis=1), 1e-9)
    inside = (px >= 1) & (px < W - 1) & (py >= 1) & (py < H - 1)
    w_vis = vis.ravel()[geo.index] * np.clip((cos - 0.2) / 0.5, 0, 1) * inside

    mapx = np.full(size * size, -1.0, np.float32)
    mapy = np.full(size * size, -1.0, np.float32)
    mapx[geo.index], mapy[geo.index] = px - 0.5, py - 0.5
    sample = cv2.remap(np.ascontiguousarray(rgb), mapx.reshape(size, size), mapy.reshape(size, size),
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    lin = srgb_to_linear(sample.reshape(-1, 3)[geo.index]) + 1e-4
    lum = lin @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    # Large maps (4096) hold gigabytes of per-texel arrays: drop each as soon as it is used up.
    del proj, px, py, mapx, mapy, sample, vis, cos, inside
    info["unwrap_s"] = time.perf_counter() - t0

    # -- lighting and shading-free colour ------------------------------------------------------
    sigma = s.highpass_mm * 1e-3 / geo.metres_per_texel
    # The light is fitted on skin-coloured texels: chromaticity does not depend on a grey light,
    # so moles, freckles, brows and lips can be told apart before the shading is known.
    chroma = highpass_colour(_scatter(geo, np.log(lin)), _scatter(geo, w_vis), sigma, geo)[1]
    uncol = uncoloured(chroma, chroma_scale(chroma, w_vis > 0.5))
    del chroma
    # A marking's soft rim is less coloured than its core: spread the low weight outwards.
    skin_g = cv2.erode(_scatter(geo, uncol, 1.0), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    w_light = w_vis * skin_g.ravel()[geo.index]
    del skin_g
    # Mirror texel's luminance and normal, for the symmetric-albedo equations of the fit.
    mx, my = mirror_maps(model, size)
    ok_m = (mx >= 0).ravel()[geo.index]
    grid = _scatter(geo, np.concatenate([lum[:, None], N, w_light[:, None]], 1), np.nan)
    mg = cv2.remap(grid, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=np.nan).reshape(-1, 5)[geo.index]
    good_m = ok_m & (mg[:, 4] > 0.5)
    m_lum = np.where(good_m, mg[:, 0], np.nan)
    m_n = np.where(good_m[:, None], mg[:, 1:4], np.nan)
    light = estimate_directional(lum, N, w_light, mirror_intensity=m_lum, mirror_normals=m_n)
    if light is not None:
        info["light"] = {"ambient": light[0], "diffuse": light[1],
                         "direction": [float(x) for x in light[2]]}
    # Under soft, even light (a diffuse share under MIN_LIGHT_CONTRAST) no single direction is
    # well determined, and a wrong one with little contrast would scale the relief up without
    # bound: there the nine-term fit, which keeps its terms small, is used instead.
    if light is not None and light[1] >= MIN_LIGHT_CONTRAST * (light[0] + light[1]):
        coeffs = directional_sh(*light, N, w_vis)
        info["light_model"] = "directional"
    else:
        coeffs = estimate_sh(lum, N, w_vis, seed=s.seed, mirror_intensity=m_lum, mirror_normals=m_n)
        info["light_model"] = "sh9"
    del grid, mg, m_lum, m_n, ok_m, good_m, w_light
    S = sh_shading(N, coeffs).astype(np.float32)
    S_floor = 0.05 * float(np.median(S[w_vis > 0])) if (w_vis > 0).any() else 1e-3
    w_vis = w_vis * (S > S_floor)      # attached shadow: no shading signal to invert
    S = np.maximum(S, S_floor)
    logq = np.log(lin / S[:, None])
    wgrid = _scatter(geo, w_vis)
    logq_g = _scatter(geo, logq)
    del logq, lin
    sel = w_vis > 0.5
    # A coloured marking pulls the local mean it is measured against: a dark spot lifts the skin
    # around it in the high-pass, a halo the solve reads as a raised rim. Measure against the
    # mean of the uncoloured skin (as found for the light fit: the shading does not change it).
    plain_skin = _scatter(geo, uncol, 1.0)
    lum_h, chroma = highpass_colour(logq_g, wgrid * plain_skin, sigma, geo)
    del logq_g, plain_skin, uncol

    # -- albedo separation ---------------------------------------------------------------------
    # Per person: how much log luminance goes with a chromaticity change (pigment), by weighted
    # least squares over the seen skin; shading is colourless, so this part is not relief.
    sig_c = chroma_scale(chroma, sel)
    skin = uncoloured(chroma, sig_c)
    if sel.sum() > MIN_SKIN_TEXELS:
        Cw = chroma[sel] * (w_vis * skin)[sel, None]
        beta = np.linalg.lstsq(Cw.T @ chroma[sel] + 1e-9 * np.eye(2), Cw.T @ lum_h[sel], rcond=None)[0]
        shade_h = lum_h - chroma @ beta
        sig_l = 1.4826 * np.median(np.abs(shade_h[sel])) + 1e-6
    else:
        beta, sig_l, shade_h = np.zeros(2), 1.0, lum_h
    # Strong colour or implausibly strong darkening/brightening: pigment, hair or specularity.
    pig = skin * np.exp(-0.5 * (shade_h / (PLAUSIBLE_SHADING * sig_l)) ** 2)
    info.update(pigment_beta=[float(x) for x in beta], chroma_sigma=float(sig_c))

    # -- linearised shading -> displacement ------------------------------------------------------
    grad = sh_gradient(N, coeffs) / S[:, None]
    c = np.einsum("nij,nj->ni", geo.pinv_jac, grad) * geo.metres_per_texel     # texel units
    used = geo.used
    interior = used.copy()
    interior[1:-1, 1:-1] &= used[:-2, 1:-1] & used[2:, 1:-1] & used[1:-1, :-2] & used[1:-1, 2:]
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    # A marking's soft rim is less coloured than its core but just as much albedo: spread the
    # low weight a few texels outwards. Only a marking's: the minimum is taken over the weight
    # blurred first, so the one- or two-texel dips of skin noise and pore shading stay where they
    # are instead of each punching a hole seven texels wide into the data.
    pig_g = _scatter(geo, pig, 1.0)
    pig_g = np.minimum(pig_g, cv2.erode(_blur(pig_g, 1.5),
                                        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))))
    wdata = wgrid * pig_g * interior
    # c is piecewise constant per triangle (its Jacobian); smooth it so the solution does not
    # step at triangle edges.
    c_grid = weighted_blur(_scatter(geo, c), used.astype(np.float32), 2.0)
    # Clip the residual where shading stops being plausible (as for the weight above), so that a
    # few outliers (specks, lashes) cannot dominate. Not tighter: pores' and creases' shading is
    # heavy-tailed, and a clip at 3 sigma shrank it (the relief's amplitude with it).
    lim = PLAUSIBLE_SHADING * sig_l
    r_grid = np.clip(_scatter(geo, shade_h), -lim, lim)
    del grad, c, lum, lum_h, chroma, skin, pig, shade_h, S, pig_g, sel
    t1 = time.perf_counter()
    # Crop to the texels with data (plus the screening reach): the FFTs cost by area.
    ys, xs = np.nonzero(wdata > 0)
    if len(ys) == 0:
        d = np.zeros((size, size), np.float32)
    else:
        m = int(4 * sigma)
        y0, y1 = max(0, ys.min() - m), min(size, ys.max() + m + 1)
        x0, x1 = max(0, xs.min() - m), min(size, xs.max() + m + 1)
        win = (slice(y0, y1), slice(x0, x1))
        d = np.zeros((size, size), np.float32)
        d[win] = solve_directional(r_grid[win], c_grid[win], wdata[win], s.smoothness,
                                   1.0 / sigma ** 2, device=s.device)
        if s.iterations > 0:    # exact weighted solve from there (cheap on a GPU)
            d[win], solve_info = solve_displacement(r_grid[win], c_grid[win], wdata[win], used[win],
                                                    s.smoothness, 1.0 / sigma ** 2, s.iterations,
                                                    s.device, x0=d[win])
            info.update(solve_info)
        info["amplitude_gain"] = gain = relief_gain(d[win], r_grid[win], c_grid[win], wdata[win])
        d[win] *= gain
    info["solve_s"] = time.perf_counter() - t1
    # The coarse fit owns the low frequencies: keep the same band the data had.
    seen_w = np.minimum(wgrid, 1.0)
    d = d - weighted_blur(d, np.maximum(seen_w, 1e-3) * used, sigma)
    d *= geo.metres_per_texel
    static = fill_unseen(d, seen_w, used, model, size, seed=s.seed)
    info["static_s"] = time.perf_counter() - t0
    return static.astype(np.float32), seen_w, coeffs, geo, info


def fill_unseen(d: np.ndarray, seen: np.ndarray, used: np.ndarray, model, size: int,
                seed: int = 0) -> np.ndarray:
    """Own relief where seen, the mirror texel's where that was seen, otherwise noise with the
    person's own relief spectrum; the gutter around the UV islands is padded for filtering."""
    import cv2

    mx, my = mirror_maps(model, size)
    pre = np.stack([d * seen, seen], -1).astype(np.float32)
    m = cv2.remap(pre, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mw = m[..., 1]
    total = seen + (1.0 - seen) * mw
    own = (d * seen + (1.0 - seen) * m[..., 0]) / np.maximum(total, 1e-6)
    total = np.clip(total, 0.0, 1.0) * used
    noise = spectral_noise(d, seen > 0.9, seed)
    out = np.where(total > 1e-6, own, 0.0) * total + noise * (1.0 - total)
    out = np.where(used, out, 0.0).astype(np.float32)
    # Gutter: the local mean of the island edge, so bilinear and mip lookups see no step to 0.
    padded = weighted_blur(out, used.astype(np.float32), 3.0)
    return np.where(used, out, padded)


def spectral_noise(d: np.ndarray, sel: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random-phase noise with the radially averaged power spectrum of d over the texels sel."""
    S = d.shape[0]
    if sel.sum() < 64:
        return np.zeros_like(d)
    ys, xs = np.nonzero(sel)
    # The largest square window inside the seen region's bounding box, centred on it.
    n = int(min(256, 2 ** int(np.log2(max(16, min(np.ptp(ys), np.ptp(xs)) // 2)))))
    cy, cx = int(np.median(ys)), int(np.median(xs))
    y0, x0 = np.clip(cy - n // 2, 0, S - n), np.clip(cx - n // 2, 0, S - n)
    patch = d[y0:y0 + n, x0:x0 + n] * sel[y0:y0 + n, x0:x0 + n]
    win = np.outer(np.hanning(n), np.hanning(n))
    P = np.abs(np.fft.rfft2(patch * win)) ** 2
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    rbin = np.minimum((np.sqrt(fx ** 2 + fy ** 2) * n).astype(int), n // 2)
    radial = np.bincount(rbin.ravel(), P.ravel(), n // 2 + 1) / np.maximum(np.bincount(rbin.ravel(), None, n // 2 + 1), 1)
    FY = np.fft.fftfreq(S)[:, None]
    FX = np.fft.rfftfreq(S)[None, :]
    rb = np.minimum((np.sqrt(FX ** 2 + FY ** 2) * n).astype(int), n // 2)
    amp = np.sqrt(radial[rb])
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft2(rng.standard_normal((S, S)).astype(np.float32)) * amp
    noise = np.fft.irfft2(spec, s=(S, S)).astype(np.float32)
    # Robust scale (spikes do not inflate it), at half strength: unseen relief is a guess.
    target = 0.5 * 1.4826 * float(np.median(np.abs(d[sel])))
    return noise * (target / max(float(np.std(noise)), 1e-12))


# -- dynamic detail ------------------------------------------------------------------------------

def compression_field(model, neutral_cm: np.ndarray, offsets: np.ndarray, size: int):
    """Per texel, the strongest compression over the given deformations and its direction.

    offsets (K, V, 3): deformations of the neutral (expression shapes at weight 1, or the
    photo's own expression as K = 1). Per face triangle and shape, the principal stretches of
    the deformation in the neutral surface metric; the shape with the smallest one wins. Returns
    (amount (S, S) in [0, 1): 1 - smallest principal stretch, clipped at 0; wave (S, S, 2): the
    unit covector in texel coordinates across the folds, i.e. along the compression)."""
    return compression_fields(model, neutral_cm, [offsets], size)[0]


def compression_fields(model, neutral_cm: np.ndarray, offset_sets, size: int) -> list:
    """`compression_field` for several stacks of deformations at once: the neutral metric and
    the texel lookup, most of the cost, are shared."""
    ft = face_triangles(model)
    tris, tri_uv = model.tris[ft], model.tri_uv[ft]
    J0 = texel_jacobians(neutral_cm, model.uvs, tris, tri_uv, size).astype(np.float32)  # (T, 3, 2)
    # The Jacobian is linear in the vertex positions: J_k = J0 + J(offsets_k) = J0 + E_k Dinv.
    unit = texel_jacobians(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float64), model.uvs,
                           np.zeros((len(ft), 3), np.int64) + [0, 1, 2], tri_uv, size)
    Dinv = unit[:, 0:2, :].astype(np.float32)                                     # (T, 2, 2)
    # Neutral metric G0 = J0^T J0 = L L^T, for whitening: A = L^-1 G L^-T.
    g00 = (J0[:, :, 0] ** 2).sum(1)
    g01 = (J0[:, :, 0] * J0[:, :, 1]).sum(1)
    g11 = (J0[:, :, 1] ** 2).sum(1)
    l00 = np.sqrt(np.maximum(g00, 1e-20))
    l10 = g01 / l00
    l11 = np.sqrt(np.maximum(g11 - l10 ** 2, 1e-20))
    i00, i10, i11 = 1.0 / l00, -l10 / (l00 * l11), 1.0 / l11                      # L^-1
    t = np.arange(len(ft))
    feats = []
    for offsets in offset_sets:
        X = np.asarray(offsets, np.float32)[:, tris]                              # (K, T, 3, 3)
        e1, e2 = X[:, :, 1] - X[:, :, 0], X[:, :, 2] - X[:, :, 0]                 # (K, T, 3)
        ju = J0[None, :, :, 0] + e1 * Dinv[None, :, 0, 0, None] + e2 * Dinv[None, :, 1, 0, None]
        jv = J0[None, :, :, 1] + e1 * Dinv[None, :, 0, 1, None] + e2 * Dinv[None, :, 1, 1, None]
        G00 = (ju * ju).sum(-1)
        G01 = (ju * jv).sum(-1)
        G11 = (jv * jv).sum(-1)
        a = i00 * i00 * G00
        b = i00 * (i10 * G00 + i11 * G01)
        c = i10 * i10 * G00 + 2 * i10 * i11 * G01 + i11 * i11 * G11
        half = np.sqrt(0.25 * (a - c) ** 2 + b * b)
        lo = 0.5 * (a + c) - half                       # smaller eigenvalue = stretch^2
        amount = 1.0 - np.sqrt(np.maximum(lo, 0.0))     # (K, T)
        k = amount.argmax(0)
        best = np.maximum(amount[k, t], 0.0)
        a, b, lo, c = a[k, t], b[k, t], lo[k, t], c[k, t]
        # Its eigenvector w (whitened) -> covector L w in texel coordinates (G0 v, v = L^-T w).
        w = np.stack([b, lo - a], 1)
        w = np.where((np.abs(b) > 1e-12)[:, None], w,
                     np.where((a < c)[:, None], [[1.0, 0.0]], [[0.0, 1.0]]))
        cov = np.stack([l00 * w[:, 0], l10 * w[:, 0] + l11 * w[:, 1]], 1)
        cov /= np.maximum(np.linalg.norm(cov, axis=1, keepdims=True), 1e-12)
        # Orientation as a doubled angle so that v and -v average instead of cancelling.
        ang = np.arctan2(cov[:, 1], cov[:, 0])
        feats += [best, best * np.cos(2 * ang), best * np.sin(2 * ang)]
    feat = np.stack(feats, 1)
    # Triangle values -> UV vertices (mean of incident triangles) -> texels (barycentric).
    nuv = len(model.uvs)
    acc = np.zeros((nuv, feat.shape[1]))
    cnt = np.zeros(nuv)
    for c in range(3):
        cnt += np.bincount(tri_uv[:, c], minlength=nuv)
        for j in range(feat.shape[1]):
            acc[:, j] += np.bincount(tri_uv[:, c], feat[:, j], minlength=nuv)
    acc /= np.maximum(cnt, 1)[:, None]
    out = (uv_interpolation(model, size) @ acc.astype(np.float32)).reshape(size, size, -1)
    results = []
    for i in range(len(offset_sets)):
        f = out[..., 3 * i:3 * i + 3]
        amount = np.clip(f[..., 0], 0.0, 1.0)
        theta = 0.5 * np.arctan2(f[..., 2], f[..., 1])
        wave = np.stack([np.cos(theta), np.sin(theta)], -1).astype(np.float32)
        results.append((amount, wave))
    return results


def oriented_wrinkles(wave: np.ndarray, wavelength_tex: float, seed: int = 0,
                      n_bins: int = 8, work_size: int = 512) -> np.ndarray:
    """Unit-amplitude fold pattern whose crests run across `wave` (S, S, 2), valleys negative.

    Band-pass noise elongated perpendicular to each of n_bins directions (long, roughly parallel
    lines), blended per texel between the two directions nearest its own; computed at
    work_size and resized (the wavelength is many texels)."""
    import cv2

    S = wave.shape[0]
    n = min(S, work_size)
    f0 = (S / n) / max(wavelength_tex, 2.0)
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft2(rng.standard_normal((n, n)).astype(np.float32))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    bands = []
    for j in range(n_bins):
        a = np.pi * j / n_bins
        along = fx * np.cos(a) + fy * np.sin(a)
        across = -fx * np.sin(a) + fy * np.cos(a)
        g = np.exp(-0.5 * ((np.abs(along) - f0) / (0.25 * f0)) ** 2) * np.exp(-0.5 * (across / (0.08 * f0)) ** 2)
        b = np.fft.irfft2(spec * g, s=(n, n)).astype(np.float32)
        bands.append(b / max(float(b.std()), 1e-12))
    bands = np.stack(bands)
    wv = cv2.resize(wave, (n, n), interpolation=cv2.INTER_LINEAR)
    pos = np.mod(np.arctan2(wv[..., 1], wv[..., 0]), np.pi) / (np.pi / n_bins)
    j0 = np.floor(pos).astype(np.int64) % n_bins
    f = (pos - np.floor(pos)).astype(np.float32)
    r, c = np.indices((n, n))
    # Noise bands are independent: blend by energy so the contrast does not dip in between.
    x = np.sqrt(1 - f) * bands[j0, r, c] + np.sqrt(f) * bands[(j0 + 1) % n_bins, r, c]
    # Folds are narrow valleys between broad crests.
    x = -np.maximum(x, 0.0) ** 1.5
    x -= x.mean()
    # Unit depth at a typical valley (the 3rd percentile), not at the rare deepest one: the
    # field is heavy-tailed, and scaling by its extreme left most folds a tenth as deep.
    x /= max(float(-np.percentile(x, 3)), 1e-12)
    x = np.maximum(x, -1.5)
    return cv2.resize(x.astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC)


def dynamic_detail(static: np.ndarray, seen: np.ndarray, model, neutral_cm: np.ndarray,
                   expression: np.ndarray | None, metres_per_texel: float,
                   settings: DetailSettings | None = None):
    """(static without the photo's own expression wrinkles, compressed offset, stretched offset,
    info); all (S, S) metres."""
    s = settings or DetailSettings()
    size = static.shape[0]
    tid, _ = uv_raster(model, size)
    used = tid >= 0
    own_expression = expression is not None and np.any(np.asarray(expression) > 0.05)
    sets = [model.exp_basis]
    if own_expression:
        sets.append(np.tensordot(np.asarray(expression, np.float32), model.exp_basis, 1)[None])
    fields = compression_fields(model, neutral_cm, sets, size)
    amount, wave = fields[0]
    lam_tex = s.wrinkle_wavelength_mm * 1e-3 / metres_per_texel
    # Depth from the person: deeper static relief, deeper expression folds.
    band = static - _blur(static, lam_tex)
    sel = (seen > 0.9) & used
    rms = float(np.sqrt(np.mean(band[sel] ** 2))) if sel.sum() > MIN_SKIN_TEXELS else 0.0
    depth = float(np.clip(8.0 * rms, *s.wrinkle_depth_m))
    # Compression below ~8 % does not fold skin visibly; above ~30 % it is fully folded.
    weight = np.clip((amount - 0.08) / 0.22, 0.0, 1.0) ** 1.5
    folds = oriented_wrinkles(wave, lam_tex, s.seed) * depth * weight
    static_out = static
    info = {"wrinkle_depth_m": depth, "static_band_rms_m": rms}
    if own_expression:
        # Folds the photo shows where its own expression compresses the skin are dynamic:
        # take them out of the static map and put them, scaled to full compression, into the
        # compressed offset.
        own = fields[1][0]
        m = np.clip((own - 0.03) / 0.07, 0.0, 1.0) * np.minimum(seen, 1.0)
        gain = np.clip(amount / np.maximum(own, 1e-3), 1.0, 1.5)
        static_out = static - m * band
        # The recovered band is noisy: keep half the generated folds where it takes over.
        folds = (1.0 - 0.5 * m) * folds + m * band * gain
        info["photo_fold_texels"] = int((m > 0.5).sum())
    # Stretch smooths the skin: remove a share of the finest relief (below ~1 mm).
    fine = static_out - _blur(static_out, max(1.0, 0.5e-3 / metres_per_texel))
    stretched = -s.stretch_attenuation * fine
    z = np.zeros_like(static)
    return (static_out.astype(np.float32), np.where(used, folds, z).astype(np.float32),
            np.where(used, stretched, z).astype(np.float32), info)


def compute_detail(rgb: np.ndarray, verts_cam_mm: np.ndarray, K: np.ndarray, model,
                   neutral_cm: np.ndarray, expression: np.ndarray | None,
                   seen_mask: np.ndarray | None, settings: DetailSettings | None = None) -> DetailMaps:
    """Static and dynamic maps for one photo and fit (see the module docstring)."""
    from .errors import HiFaceError

    s = settings or DetailSettings()
    if int(s.size) not in SIZES:
        raise HiFaceError(f"detail size must be one of {SIZES}, got {s.size}")
    t0 = time.perf_counter()
    static, seen, coeffs, geo, info = static_detail(rgb, verts_cam_mm, K, model, seen_mask, s)
    t1 = time.perf_counter()
    mpt = metres_per_texel(model, int(s.size), neutral_cm)
    static, compressed, stretched, dinfo = dynamic_detail(static, seen, model, neutral_cm,
                                                          expression, mpt, s)
    info.update(dinfo)
    info["dynamic_s"] = time.perf_counter() - t1
    info["total_s"] = time.perf_counter() - t0
    return DetailMaps(static=static, compressed=compressed, stretched=stretched,
                      seen=seen.astype(np.float32), lighting=np.asarray(coeffs, np.float32),
                      metres_per_texel=mpt, report=info)


# -- export -------------------------------------------------------------------------------------

def save_displacement(path, disp: np.ndarray) -> dict:
    """Write a displacement map (metres, row 0 = v 1) as a 16-bit PNG or a float EXR.

    PNG: value v in 0..65535 encodes d = (v / 65535 - 0.5) * 2 * scale_m, i.e. a Blender
    Displace modifier with midlevel 0.5 and strength 2 * scale_m (in metres) reproduces it; the
    metadata is also stored in the PNG's text chunk "hiface_displacement". EXR: float32 metres
    (scale_m 1, midlevel 0). Returns the metadata."""
    path = Path(path)
    d = np.asarray(disp, np.float32)
    if path.suffix.lower() == ".exr":
        import os
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2
        meta = {"format": "exr", "units": "m", "scale_m": 1.0, "midlevel": 0.0,
                "size": int(d.shape[0])}
        if not cv2.imwrite(str(path), d):
            raise OSError(f"could not write {path} (OpenEXR support missing in OpenCV?)")
        path.with_suffix(".json").write_text(json.dumps(meta))
        return meta
    from PIL import Image, PngImagePlugin

    scale = float(max(np.abs(d).max(), 1e-9))
    v = np.clip(np.rint((d / scale * 0.5 + 0.5) * 65535), 0, 65535).astype(np.uint16)
    meta = {"format": "png16", "units": "m", "scale_m": scale, "midlevel": 0.5,
            "strength_m": 2 * scale, "size": int(d.shape[0]),
            "decode": "d = (v / 65535 - 0.5) * 2 * scale_m"}
    info = PngImagePlugin.PngInfo()
    info.add_text("hiface_displacement", json.dumps(meta))
    Image.fromarray(v).save(path, pnginfo=info)
    return meta


DETAIL_MAPS = ("static", "compressed", "stretched")


def detail_map_files(fmt: str, prefix: str = "") -> list[str]:
    """The file names save_detail_maps writes (an EXR has a .json beside it)."""
    if fmt not in ("png", "exr"):
        raise ValueError(f"unknown detail map format {fmt!r}")
    exts = ("exr", "json") if fmt == "exr" else ("png",)
    return [f"{prefix}detail_{m}.{ext}" for m in DETAIL_MAPS for ext in exts]


def save_detail_maps(maps: dict, folder, fmt: str, prefix: str = "") -> dict:
    """maps {static, compressed, stretched: metres} -> `<prefix>detail_<map>.<fmt>` files in
    folder; returns each map's file name and decoding metadata."""
    detail_map_files(fmt)                      # the format check
    folder = Path(folder)
    out = {}
    for name in DETAIL_MAPS:
        path = folder / f"{prefix}detail_{name}.{fmt}"
        out[name] = {"file": path.name, **save_displacement(path, maps[name])}
    return out


def load_displacement(path) -> tuple[np.ndarray, dict]:
    """Read back what save_displacement wrote: (metres (S, S) float32, metadata)."""
    path = Path(path)
    if path.suffix.lower() == ".exr":
        import os
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
        import cv2
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise OSError(f"cannot read {path}")
        return d.astype(np.float32), json.loads(path.with_suffix(".json").read_text())
    from PIL import Image

    with Image.open(path) as im:
        meta = json.loads(im.text["hiface_displacement"])
        v = np.asarray(im, dtype=np.uint16).astype(np.float32)
    return ((v / 65535.0 - 0.5) * 2.0 * meta["scale_m"]).astype(np.float32), meta
