"""Small geometry helpers shared by the converter, the fitter and the texture (numpy only)."""
from __future__ import annotations

import numpy as np


def closest_points_on_triangles(points: np.ndarray, verts: np.ndarray, tris: np.ndarray,
                                k: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each point, the closest point on the triangle mesh.

    Returns (triangle index, barycentric coordinates (N, 3), distance). Searches the k triangles
    whose centroids are nearest, which is exact for a reasonably uniform mesh.
    """
    from scipy.spatial import cKDTree

    a, b, c = (verts[tris[:, i]] for i in range(3))
    cand = cKDTree((a + b + c) / 3.0).query(points, k=min(k, len(tris)))[1]
    p = points[:, None, :]
    A, B, C = a[cand], b[cand], c[cand]
    bary = _closest_bary(p, A, B, C)
    q = bary[..., 0:1] * A + bary[..., 1:2] * B + bary[..., 2:3] * C
    d = np.linalg.norm(q - p, axis=-1)
    j = d.argmin(1)
    rows = np.arange(len(points))
    return cand[rows, j], bary[rows, j], d[rows, j]


def _closest_bary(p, a, b, c):
    """Barycentric coordinates of the closest point of triangle abc to p (vectorised)."""
    ab, ac, ap = b - a, c - a, p - a
    d00 = (ab * ab).sum(-1)
    d01 = (ab * ac).sum(-1)
    d11 = (ac * ac).sum(-1)
    d20 = (ap * ab).sum(-1)
    d21 = (ap * ac).sum(-1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-20)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    u = 1.0 - v - w
    inside = (u >= 0) & (v >= 0) & (w >= 0)
    best = np.stack([u, v, w], -1)
    if inside.all():
        return best
    # Outside: the closest point lies on one of the edges.
    cands = []
    for (s, e, i, j) in ((a, b, 0, 1), (b, c, 1, 2), (c, a, 2, 0)):
        se = e - s
        t = np.clip(((p - s) * se).sum(-1) / np.maximum((se * se).sum(-1), 1e-20), 0.0, 1.0)
        q = s + t[..., None] * se
        bc = np.zeros(best.shape)
        bc[..., i] = 1.0 - t
        bc[..., j] = t
        cands.append((np.linalg.norm(q - p, axis=-1), bc))
    dist = np.stack([x[0] for x in cands], -1)
    k = dist.argmin(-1)
    edge = np.stack([x[1] for x in cands], -2)
    edge_best = np.take_along_axis(edge, k[..., None, None].repeat(3, -1), -2)[..., 0, :]
    return np.where(inside[..., None], best, edge_best)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares s, R, t with dst ~ s R src + t (Umeyama)."""
    ms, md = src.mean(0), dst.mean(0)
    xs, xd = src - ms, dst - md
    u, sig, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag(d) @ vt
    s = (sig * d).sum() / (xs ** 2).sum(1).mean()
    return float(s), r, md - s * r @ ms


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    n = np.zeros_like(verts)
    for i in range(3):
        np.add.at(n, tris[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
