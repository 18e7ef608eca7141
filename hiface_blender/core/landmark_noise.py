"""A learned model of the landmark detector's error, for the photo fit.

MediaPipe's error on one face is not independent pixel noise: most of it is a smooth, per-face
displacement of many landmarks together, about as large as the differences between people's
faces. Treating the landmarks as independent lets that displacement bend the identity. Here the
error is measured at build time on synthetic renders with known geometry, expressed in the face's
own frame (so it does not depend on head pose or image size), and summarised as a Gaussian with
a low-rank plus diagonal covariance. The fit then weighs residuals by its inverse: directions the
detector gets wrong on most faces count little, the rest count more than one shared sigma allows.

Covers the landmarks that sit at fixed surface points (not the sliding face oval, not the iris).
"""
from __future__ import annotations

import numpy as np

from .result import AXES_ICT_TO_CV

# ICT axes (Y up, +Z forward, cm) to OpenCV model axes (Y down, +Z away from the camera, mm).
ICT_TO_CV_MM = AXES_ICT_TO_CV.astype(np.float64) * 10.0
NOISE_RANK = 160       # error directions kept in full; the rest of the variance goes to the diagonal
NOISE_SHRINK = 0.9     # share of the low-rank variance trusted (500 renders for 864 coordinates)
ROBUST_SIGMAS = 3.0    # beyond this normalised distance a landmark's pull stops growing


def noise_landmarks(contour_mp: np.ndarray, n: int = 478, n_iris: int = 10) -> np.ndarray:
    """MediaPipe ids the model covers: fixed surface points, no face oval, no iris."""
    skip = set(int(i) for i in contour_mp) | set(range(n - n_iris, n))
    return np.array([i for i in range(n) if i not in skip], np.int32)


def model_frame_offsets(depth_mm, rotation, focal: float, delta_px, axes=ICT_TO_CV_MM):
    """Image offsets (..., P, 2) px of points at camera depths (..., P, 1) mm -> (..., P, 2)
    offsets in the face's x, y (ICT axes, cm): each offset taken at its point's depth and rotated
    back into the model frame (rotation (..., 3, 3)). numpy or torch alike (`axes` of the same
    kind), so the build's error model and the fits' residuals are the same quantity."""
    return ((delta_px * depth_mm / focal) @ rotation[..., :2, :] / axes)[..., :2]


def learn_noise(offsets: np.ndarray, rank: int = NOISE_RANK, shrink: float = NOISE_SHRINK):
    """offsets (n, P, 2) cm: detected minus true, per render. Returns (basis (r, P*2),
    diag (P*2,)): covariance = basis.T @ basis + diag(diag), about the mean.

    The mean itself is not kept: the landmark calibration already moved each point to where the
    detector puts it, and what mean is left depends on the skin texture of the renders (learned
    on one texture, it made the fit worse on others)."""
    x = offsets.reshape(len(offsets), -1).astype(np.float64)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    rank = min(rank, len(s))
    var = s[:rank] ** 2 / len(x)
    low = (vt[:rank].T ** 2 * var).sum(1)
    rest = np.maximum((xc ** 2).mean(0) - low, 0.0)
    # The untrusted share of each kept direction goes to the diagonal: the total stays measured.
    diag = rest + (1.0 - shrink) * low
    diag = np.maximum(diag, 0.05 * diag.mean())
    basis = np.sqrt(shrink * var)[:, None] * vt[:rank]
    return basis.astype(np.float32), diag.astype(np.float32)


class NoiseEnergy:
    """r^T C^-1 r for residuals r (P, 2) cm, C = basis.T basis + diag, by the Woodbury identity."""

    def __init__(self, ids, basis, diag, device) -> None:
        import torch

        dt = torch.float32
        self.ids = torch.as_tensor(np.asarray(ids, np.int64), device=device)
        b = np.asarray(basis, np.float64)
        dinv = 1.0 / np.asarray(diag, np.float64)
        g = dinv[:, None] * b.T                              # D^-1 U
        inner = np.linalg.inv(np.eye(len(b)) + b @ g)        # (I + U^T D^-1 U)^-1
        self.dinv = torch.as_tensor(dinv, dtype=dt, device=device).reshape(-1, 2)
        self.g = torch.as_tensor(g, dtype=dt, device=device)
        self.chol = torch.as_tensor(np.linalg.cholesky(inner), dtype=dt, device=device)

    def __call__(self, r):
        return self.batch(r[None])

    def batch(self, r):
        """The sum of the energies of a stack of residual sets (B, P, 2)."""
        import torch

        q = (r * r * self.dinv).sum(-1)
        # Landmarks far outside the model (occlusion, a missed feature) pull no harder than at
        # ROBUST_SIGMAS: their residual is scaled down, the scale held constant per step.
        scale = torch.clamp(ROBUST_SIGMAS / torch.sqrt(q / 2 + 1e-12), max=1.0).detach()
        r = (r * scale[..., None]).reshape(r.shape[0], -1)
        return (r * r * self.dinv.reshape(-1)).sum() - ((r @ self.g) @ self.chol).pow(2).sum()
