"""Second-order spherical-harmonics lighting: basis, shading, its gradient, and a robust fit.

The nine basis functions are the real SH up to order 2 without their normalising constants
(the fitted coefficients absorb them): 1, x, y, z, xy, xz, yz, x^2 - y^2, 3z^2 - 1, where
(x, y, z) is the unit normal in whatever frame the caller uses (the engine uses the photo's
OpenCV camera frame). Irradiance of any distant lighting on a Lambertian surface is within a
few per cent of such a nine-term function of the normal (Ramamoorthi and Hanrahan 2001).
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
