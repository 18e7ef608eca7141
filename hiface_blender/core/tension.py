"""Per-vertex tension of expression shapes: how much the skin around a vertex is compressed or
stretched, as the mean relative change of its incident edge lengths against the neutral mesh
(negative = compressed, positive = stretched). The same quantity, over the same edges (the
polygons' own, not the diagonals of their triangulation), as the Blender rig computes live from
the evaluated mesh, so the stored per-shape values and the live ones agree."""
from __future__ import annotations

import numpy as np


def mesh_edges(tris: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges of a triangle mesh, smaller index first."""
    tris = np.asarray(tris, np.int64)
    return _unique_edges(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]))


def polygon_edges(loop_vert: np.ndarray, poly_start: np.ndarray, poly_size: np.ndarray) -> np.ndarray:
    """(E, 2) unique undirected edges of a polygon mesh (the edges Blender makes for it)."""
    loop_vert = np.asarray(loop_vert, np.int64)
    start = np.asarray(poly_start, np.int64)
    size = np.asarray(poly_size, np.int64)
    corner = np.arange(len(loop_vert))
    poly = np.repeat(np.arange(len(start)), size)
    nxt = np.where(corner + 1 - start[poly] < size[poly], corner + 1, start[poly])
    return _unique_edges(np.stack([loop_vert, loop_vert[nxt]], 1))


def _unique_edges(e: np.ndarray) -> np.ndarray:
    """(E, 2) vertex pairs -> unique undirected edges, smaller index first, sorted."""
    e = np.sort(e, 1)
    n = int(e.max()) + 1
    key = np.unique(e[:, 0] * n + e[:, 1])
    return np.stack([key // n, key % n], 1)


def _operators(edges: np.ndarray, n_vertices: int):
    """Sparse (E, V) edge difference and (V, E) mean-over-incident-edges matrices."""
    from scipy import sparse

    E = len(edges)
    rows = np.repeat(np.arange(E), 2)
    cols = edges.ravel()
    diff = sparse.csr_matrix((np.tile(np.array([1.0, -1.0], np.float32), E), (rows, cols)),
                             shape=(E, n_vertices))
    cnt = np.bincount(cols, minlength=n_vertices).astype(np.float32)
    mean = sparse.csr_matrix(((1.0 / np.maximum(cnt[cols], 1.0)).astype(np.float32), (cols, rows)),
                             shape=(n_vertices, E))
    return diff, mean


def _edge_vectors(diff, meshes: np.ndarray) -> np.ndarray:
    """(E, K, 3) edge vectors of K meshes (K, V, 3), all in one sparse product (E, V) @ (V, 3K)."""
    K, V = meshes.shape[:2]
    return (diff @ meshes.transpose(1, 0, 2).reshape(V, 3 * K)).reshape(-1, K, 3)


def _tension(l0: np.ndarray, e1: np.ndarray, mean) -> np.ndarray:
    """(K, V) mean relative edge-length change: l0 (E,) neutral lengths, e1 (E, K, 3) edge vectors."""
    l1 = np.sqrt(np.einsum("ekc,ekc->ek", e1, e1))
    rel = np.where(l0[:, None] > 1e-9, l1 / np.maximum(l0, 1e-9)[:, None] - 1.0, 0.0)
    return np.asarray(mean @ rel.astype(np.float32)).T


def vertex_tension(neutral: np.ndarray, deformed: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(K, V) tension of each of `deformed` (K, V, 3) against `neutral` (V, 3)."""
    neutral = np.asarray(neutral, np.float32)
    deformed = np.asarray(deformed, np.float32)
    diff, mean = _operators(edges, neutral.shape[0])
    return _tension(np.linalg.norm(diff @ neutral, axis=1), _edge_vectors(diff, deformed), mean)


def model_edges(model) -> np.ndarray:
    """The polygon edges of a FaceModelData (as the built Blender mesh has them)."""
    return polygon_edges(model.loop_vert, model.poly_start, model.poly_size)


class ExpressionTension:
    """The tension of each expression shape applied alone to any person's neutral mesh of one
    model. An edge of neutral + w * shape is the neutral edge plus w times the shape's own edge,
    and the shapes' edges do not depend on the person: they are found once here, and each
    reconstruction only adds its neutral mesh's edges."""

    def __init__(self, exp_basis: np.ndarray, edges: np.ndarray) -> None:
        basis = np.asarray(exp_basis, np.float32)
        self.diff, self.mean = _operators(edges, basis.shape[1])
        self.shape_edges = _edge_vectors(self.diff, basis)

    def __call__(self, neutral: np.ndarray, weight: float = 1.0) -> np.ndarray:
        """(K, V) float16 for the neutral mesh (V, 3)."""
        e0 = self.diff @ np.asarray(neutral, np.float32)
        e1 = e0[:, None, :] + np.float32(weight) * self.shape_edges
        return _tension(np.linalg.norm(e0, axis=1), e1, self.mean).astype(np.float16)


def expression_tension(neutral: np.ndarray, exp_basis: np.ndarray, edges: np.ndarray,
                       weight: float = 1.0) -> np.ndarray:
    """(K, V) float16: the tension of each expression shape applied alone at `weight` to the
    person's neutral mesh (neutral (V, 3), exp_basis (K, V, 3) offsets, edges (E, 2), e.g.
    `model_edges(model)`). For many people of one model, keep an `ExpressionTension`."""
    return ExpressionTension(exp_basis, edges)(neutral, weight)
