"""Second-order spherical-harmonics lighting: basis, shading, its gradient, and robust fits.

The nine basis functions are the real SH up to order 2 without their normalising constants
(the fitted coefficients absorb them): 1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1, where
(x, y, z) is the unit normal in whatever frame the caller uses (the engine uses the photo's
OpenCV camera frame). Irradiance of any distant lighting on a Lambertian surface is within a
few per cent of such a nine-term function of the normal (Ramamoorthi and Hanrahan 2001).

Fitting all nine terms to one photo of a face is poorly conditioned: the face's normals span less
than a hemisphere, so the constant, the depth term and the second-order terms trade off against
each other and against the albedo's own large-scale profile (darker brows, lips, sockets, a paler
forehead). `estimate_directional` fits the physical model of an ambient term plus one distant
light (four unknowns) instead, and `directional_sh` writes its irradiance over the face's normals
as nine SH coefficients for the rest of the engine.
"""
from __future__ import annotations

import numpy as np

N_COEFFS = 9


def sh_basis(n: np.ndarray) -> np.ndarray:
    """(..., 3) unit normals -> (..., 9) basis values."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    return np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y,
                     3.0 * z * z - 1.0], -1)


def sh_shading(n: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Shading S(n) = sum_k c_k Y_k(n); coeffs (9,) grey or (9, C) per channel."""
    return sh_basis(n) @ coeffs


def sh_gradient(n: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """dS/dn, (..., 3), for grey coefficients (9,): how shading changes as the normal tilts."""
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    c = np.asarray(coeffs, np.float32)
    gx = c[1] + c[4] * y + c[5] * z + 2.0 * c[7] * x
    gy = c[2] + c[4] * x + c[6] * z - 2.0 * c[7] * y
    gz = c[3] + c[5] * x + c[6] * y + 6.0 * c[8] * z
    return np.stack([gx, gy, gz], -1)


def estimate_sh(intensity: np.ndarray, normals: np.ndarray, weights: np.ndarray | None = None,
                iterations: int = 4, max_samples: int = 60000, seed: int = 0,
                mirror_intensity: np.ndarray | None = None, mirror_normals: np.ndarray | None = None,
                symmetry: float = 4.0) -> np.ndarray:
    """Grey SH coefficients with intensity ~ albedo * S(normal).

    intensity (N,), normals (N, 3) unit, weights (N,) >= 0 (visibility, skin confidence).
    Two kinds of equations: a constant albedo, I = S(n), and, where the mirror texel's
    intensity and normal are given (finite), a symmetric albedo, I S(n_m) = I_m S(n), which
    holds for a face whatever its albedo's left-right profile and so keeps a side light from
    being mistaken for darker skin (and the reverse). `symmetry` weighs the second kind.
    Iteratively reweighted with Tukey weights on the relative residual, so brows, shadowed
    creases, highlights and hair do not tilt the estimate. A small ridge pulls the
    second-order terms towards zero: a face's own albedo and occlusion (darker brows, lips, eye
    sockets and nostrils, all symmetric) fit second-order terms as readily as light does, and a
    wrong second-order term tilts the shading gradient the detail solve divides by."""
    intensity = np.asarray(intensity, np.float64).ravel()
    normals = np.asarray(normals, np.float64).reshape(-1, 3)
    w0 = np.ones(len(intensity)) if weights is None else np.asarray(weights, np.float64).ravel()
    ok = np.nonzero((w0 > 0) & np.isfinite(intensity) & np.isfinite(normals).all(1))[0]
    if len(ok) < 50:
        return np.array([max(float(np.median(intensity)) if len(intensity) else 0.5, 1e-3)]
                        + [0.0] * (N_COEFFS - 1), np.float32)
    if len(ok) > max_samples:
        ok = np.random.default_rng(seed).choice(ok, max_samples, replace=False)
    A = sh_basis(normals[ok])
    b = intensity[ok]
    w_base = w0[ok]
    scale = max(float(np.median(b)), 1e-6)
    sym = None
    if mirror_intensity is not None and mirror_normals is not None:
        mi = np.asarray(mirror_intensity, np.float64).ravel()[ok]
        mn = np.asarray(mirror_normals, np.float64).reshape(-1, 3)[ok]
        has = np.isfinite(mi) & np.isfinite(mn).all(1)
        if has.sum() > 50:
            # I Y(n_m) - I_m Y(n), divided by the intensity scale: residuals in albedo units.
            sym = (b[has, None] * sh_basis(mn[has]) - mi[has, None] * A[has]) / scale
            sym_rows = np.nonzero(has)[0]
    ridge = np.diag([0.0, 1e-3, 1e-3, 1e-3, 0.1, 0.1, 0.1, 0.1, 0.1]) * len(ok)
    w = w_base.copy()
    ws = None if sym is None else w_base[sym_rows].copy()
    coeffs = np.zeros(N_COEFFS)
    for it in range(iterations):
        Aw = A * w[:, None]
        lhs = A.T @ Aw + ridge * w.mean()
        rhs = Aw.T @ b
        if sym is not None:
            lhs = lhs + symmetry * (sym.T @ (sym * ws[:, None]))
        coeffs = np.linalg.solve(lhs, rhs)
        r = (b - A @ coeffs) / scale
        w = w_base * _tukey(r)
        if sym is not None:
            ws = w_base[sym_rows] * _tukey(sym @ coeffs)
    return coeffs.astype(np.float32)


def _tukey(r: np.ndarray) -> np.ndarray:
    s = 1.4826 * np.median(np.abs(r)) + 1e-6
    u = r / (4.685 * s)
    return np.where(np.abs(u) < 1, (1 - u * u) ** 2, 0.0)


def sphere_directions(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (Fibonacci lattice)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = np.pi * (1.0 + 5 ** 0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def cap_directions(centre: np.ndarray, radius_deg: float, n: int) -> np.ndarray:
    """(n + 1, 3) unit vectors spread evenly over the spherical cap of the given angular radius
    around `centre`, the centre included."""
    i = np.arange(n) + 0.5
    z = 1.0 - (1.0 - np.cos(np.radians(radius_deg))) * i / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = np.pi * (1.0 + 5 ** 0.5) * i
    local = np.concatenate([[[0.0, 0.0, 1.0]], np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)])
    c = np.asarray(centre, np.float64) / np.linalg.norm(centre)
    # The rotation taking +z to c, as two reflections: through the bisector (+z -> -c), then
    # across the plane normal to c (-c -> c).
    h = np.array([0.0, 0.0, 1.0]) + c
    if np.linalg.norm(h) < 1e-9:
        return local * np.array([1.0, -1.0, -1.0])
    h /= np.linalg.norm(h)
    out = local - 2.0 * np.outer(local @ h, h)
    return out - 2.0 * np.outer(out @ c, c)


def _directional_fits(b, normals, w, sym, dirs, min_lit: float, chunk: int = 256):
    """For each candidate light direction, the weighted least-squares ambient a and diffuse d of
    b ~ a + d max(n . l, 0) (plus the symmetric-albedo rows): (loss, a, d), loss up to a constant.
    Directions that light less than `min_lit` of the weight, or need d <= 0, get an infinite loss."""
    losses, amb, dif = [], [], []
    wsum = w.sum()
    for j in range(0, len(dirs), chunk):
        L = dirs[j:j + chunk].T
        M = np.clip(normals @ L, 0.0, None)
        a00 = np.full(M.shape[1], wsum)
        a01 = w @ M
        a11 = w @ (M * M)
        b0 = np.full(M.shape[1], w @ b)
        b1 = (w * b) @ M
        lit = (w @ (M > 0)) / max(wsum, 1e-12)
        if sym is not None:
            rows, p, bi, mi, mn, ws = sym
            q = bi[:, None] * np.clip(mn @ L, 0.0, None) - mi[:, None] * M[rows]
            a00 = a00 + ws @ (p * p)
            a01 = a01 + (ws * p) @ q
            a11 = a11 + ws @ (q * q)
        det = a00 * a11 - a01 ** 2
        det = np.where(np.abs(det) > 1e-30, det, 1e-30)
        a = (b0 * a11 - a01 * b1) / det
        d = (a00 * b1 - a01 * b0) / det
        # No negative ambient: there, the best fit with the light alone.
        neg = a < 0
        a = np.where(neg, 0.0, a)
        d = np.where(neg, b1 / np.maximum(a11, 1e-30), d)
        loss = -(a * b0 + d * b1)
        losses.append(np.where((d > 0) & (lit >= min_lit), loss, np.inf))
        amb.append(a)
        dif.append(d)
    return np.concatenate(losses), np.concatenate(amb), np.concatenate(dif)


def estimate_directional(intensity: np.ndarray, normals: np.ndarray,
                         weights: np.ndarray | None = None, iterations: int = 3,
                         max_samples: int = 8000,
                         mirror_intensity: np.ndarray | None = None,
                         mirror_normals: np.ndarray | None = None, symmetry: float = 16.0,
                         min_lit: float = 0.3) -> tuple[float, float, np.ndarray] | None:
    """Ambient a, diffuse d and unit direction l (towards the light) with
    intensity ~ albedo * (a + d max(n . l, 0)).

    The same two kinds of equations as `estimate_sh`: a constant albedo, and where the mirror
    texel is given, a symmetric albedo (I S(n_m) = I_m S(n)), weighed by `symmetry`; the second
    kind is blind to the albedo's left-right profile and to the overall scale, and pins the
    direction and the ambient share. Given l the model is linear in (a, d), so l is found by
    search: a lattice over the camera's half of the sphere (a key light behind the face does not
    light what the photo sees), then finer lattices around the best, with Tukey reweighting
    (brows, lips, shadowed creases, highlights) between rounds. The ambient term is not
    negative, and the light must reach at least `min_lit` of the seen skin. None when there are
    too few samples."""
    b = np.asarray(intensity, np.float64).ravel()
    n = np.asarray(normals, np.float64).reshape(-1, 3)
    w0 = np.ones(len(b)) if weights is None else np.asarray(weights, np.float64).ravel()
    ok = np.nonzero((w0 > 0) & np.isfinite(b) & np.isfinite(n).all(1))[0]
    if len(ok) < 50:
        return None
    if len(ok) > max_samples:
        # A fixed sub-lattice of the inputs, not a random draw among the weighted ones, so that
        # down-weighting some texels (a mole) does not reshuffle the samples everywhere else.
        ok = ok[ok % -(-len(ok) // max_samples) == 0]
    b, n, w_base = b[ok], n[ok], w0[ok]
    scale = max(float(np.median(b)), 1e-6)
    b = b / scale
    sym = None
    if mirror_intensity is not None and mirror_normals is not None:
        mi = np.asarray(mirror_intensity, np.float64).ravel()[ok] / scale
        mn = np.asarray(mirror_normals, np.float64).reshape(-1, 3)[ok]
        has = np.isfinite(mi) & np.isfinite(mn).all(1)
        if has.sum() > 50:
            rows = np.nonzero(has)[0]
            k = np.sqrt(symmetry)
            sym = [rows, k * (b[rows] - mi[has]), k * b[rows], k * mi[has], mn[has],
                   w_base[rows].copy()]
    w = w_base.copy()
    l = None
    for it in range(iterations):
        # The camera's half of the sphere once (about 8 degrees apart), then finer caps around
        # the best; later rounds (after reweighting) start from the previous direction.
        steps = [(None, 0), (10.0, 80), (2.5, 60)] if it == 0 else [(6.0, 60), (1.5, 40)]
        for radius, count in steps:
            dirs = sphere_directions(600) if radius is None else cap_directions(l, radius, count)
            dirs = dirs[dirs[:, 2] <= 0.0]      # the camera's side of the face (z forward)
            loss, a_all, d_all = _directional_fits(b, n, w, sym, dirs, min_lit)
            j = int(np.argmin(loss))
            if not np.isfinite(loss[j]):
                return None
            l, a, d = dirs[j], float(a_all[j]), float(d_all[j])
        S = a + d * np.clip(n @ l, 0.0, None)
        w = w_base * _tukey(b - S)
        if sym is not None:
            rows, p, bi, mi, mn, _ = sym
            Sm = a + d * np.clip(mn @ l, 0.0, None)
            sym[5] = w_base[rows] * _tukey(bi * Sm - mi * S[rows])
    return a * scale, d * scale, l


def directional_sh(ambient: float, diffuse: float, direction: np.ndarray, normals: np.ndarray,
                   weights: np.ndarray | None = None, max_samples: int = 20000) -> np.ndarray:
    """Nine SH coefficients that best reproduce ambient + diffuse max(n . l, 0) over the given
    normals (weighted least squares): the irradiance where the face is, not over the sphere."""
    n = np.asarray(normals, np.float64).reshape(-1, 3)
    w = np.ones(len(n)) if weights is None else np.asarray(weights, np.float64).ravel()
    sel = np.flatnonzero((w > 0) & np.isfinite(n).all(1))
    sel = sel[::max(1, -(-len(sel) // max_samples))]     # nine smooth terms: a sub-lattice is plenty
    n, sw = n[sel], np.sqrt(w[sel])
    target = ambient + diffuse * np.clip(n @ np.asarray(direction, np.float64), 0.0, None)
    A = sh_basis(n)
    # A tiny ridge: the nine terms are collinear over a face's normals.
    lhs = (A * sw[:, None] ** 2).T @ A + 1e-6 * len(n) * np.eye(N_COEFFS)
    return np.linalg.solve(lhs, (A * sw[:, None] ** 2).T @ target).astype(np.float32)
