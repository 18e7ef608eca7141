"""A z-buffer triangle rasteriser in numpy: no bpy, no OpenGL, no GPU.

Conventions
-----------
Continuous image coordinates: x to the right, y down, the image covering [0, W] x [0, H]; pixel
(row i, column j) is sampled at its centre (x = j + 0.5, y = i + 0.5). This is the convention of
MediaPipe's normalised landmarks times the image size, and of a pinhole K whose principal point
is (W/2, H/2) for a centred camera. (cv2.remap samples pixel centres at integer coordinates:
subtract 0.5 before remapping.)

A pixel is covered by a triangle when its centre lies inside or on an edge; the nearest
covering triangle (smallest interpolated z) wins. Both windings are drawn (no culling).

How it is fast
--------------
Triangles are grouped by the size of their pixel bounding box (rounded up to a few sizes), and
each group is evaluated as one (n, bh, bw) block of edge functions. Each covered fragment gives a
64-bit key (quantised depth in the high bits, triangle id in the low bits); one `np.minimum.at`
per pixel then resolves visibility and identity together. Barycentrics are recomputed for the
winning triangle of each pixel only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK = 1 << 22     # candidate pixels evaluated per numpy block (memory bound, ~50 MB)
_EPS = -1e-6         # edge tolerance: a hair of overlap, so no cracks between neighbours


@dataclass
class Raster:
    tri_id: np.ndarray   # (H, W) int32, -1 where no triangle covers the pixel centre
    bary: np.ndarray     # (H, W, 3) float32, weights of the triangle's corners (0 outside)
    depth: np.ndarray    # (H, W) float32, interpolated z (inf outside)

    @property
    def mask(self) -> np.ndarray:
        return self.tri_id >= 0

    def interpolate(self, values: np.ndarray, tris: np.ndarray, fill=0.0) -> np.ndarray:
        """Per-pixel interpolation of per-vertex `values` (V, C) or (V,) through the winning
        triangle's barycentrics. `tris` indexes into `values` (use tri_uv for UV values)."""
        return interpolate(self.tri_id, self.bary, values, tris, fill)


def interpolate(tri_id, bary, values, tris, fill=0.0) -> np.ndarray:
    values = np.asarray(values)
    squeeze = values.ndim == 1
    if squeeze:
        values = values[:, None]
    out = np.full(tri_id.shape + values.shape[1:], fill, np.float32)
    m = tri_id >= 0
    t = tris[tri_id[m]]                                  # (n, 3)
    b = bary[m]                                          # (n, 3)
    out[m] = (values[t[:, 0]] * b[:, 0:1] + values[t[:, 1]] * b[:, 1:2]
              + values[t[:, 2]] * b[:, 2:3])
    return out[..., 0] if squeeze else out


def rasterize(verts_px, tris, height: int, width: int, perspective: bool = False) -> Raster:
    """Rasterise triangles given in pixel coordinates.

    verts_px: (V, 3) float, x and y in pixels (see conventions above), z depth, larger is
        farther. Vertices or triangles with non-finite coordinates are skipped.
    tris: (T, 3) int vertex indices.
    perspective: z is camera depth (> 0): visibility compares the correctly interpolated depth
        (1/z is linear in screen space) and the barycentrics are perspective-correct (weights
        of the 3D triangle corners). Triangles touching z <= 0 are skipped. Without it, z and
        the barycentrics are interpolated linearly in screen space (right for orthographic
        projections and for UV space).
    """
    verts_px = np.asarray(verts_px, np.float64)
    tris = np.asarray(tris, np.int64)
    H, W = int(height), int(width)
    tri_id = np.full((H, W), -1, np.int32)
    bary = np.zeros((H, W, 3), np.float32)
    depth = np.full((H, W), np.inf, np.float32)
    if len(tris) == 0 or H == 0 or W == 0:
        return Raster(tri_id, bary, depth)

    v = verts_px[tris]                                  # (T, 3, 3)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    ok = np.isfinite(v).all(axis=(1, 2))
    zl = z
    if perspective:
        ok &= (z > 0).all(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            zl = 1.0 / z                                   # linear in screen space
    # Edge-function coefficients: w_k(px, py) = A_k px + B_k py + C_k, normalised by the area.
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    ok &= np.abs(area) > 1e-12
    # Pixel index ranges whose centres may lie inside.
    with np.errstate(invalid="ignore"):
        j0 = np.ceil(np.nanmin(x, 1) - 0.5)
        j1 = np.floor(np.nanmax(x, 1) - 0.5)
        i0 = np.ceil(np.nanmin(y, 1) - 0.5)
        i1 = np.floor(np.nanmax(y, 1) - 0.5)
    ok &= (j1 >= 0) & (i1 >= 0) & (j0 <= W - 1) & (i0 <= H - 1) & (j1 >= j0) & (i1 >= i0)
    idx = np.nonzero(ok)[0]
    if len(idx) == 0:
        return Raster(tri_id, bary, depth)
    j0 = np.clip(j0[idx], 0, W - 1).astype(np.int64)
    j1 = np.clip(j1[idx], 0, W - 1).astype(np.int64)
    i0 = np.clip(i0[idx], 0, H - 1).astype(np.int64)
    i1 = np.clip(i1[idx], 0, H - 1).astype(np.int64)
    x, y, zl, area = x[idx], y[idx], zl[idx], area[idx]
    inv = 1.0 / area
    # Corner k's weight is the edge opposite to it: (k+1, k+2).
    A = np.stack([(y[:, (k + 1) % 3] - y[:, (k + 2) % 3]) for k in range(3)], 1) * inv[:, None]
    B = np.stack([(x[:, (k + 2) % 3] - x[:, (k + 1) % 3]) for k in range(3)], 1) * inv[:, None]
    C = np.stack([(x[:, (k + 1) % 3] * y[:, (k + 2) % 3] - x[:, (k + 2) % 3] * y[:, (k + 1) % 3])
                  for k in range(3)], 1) * inv[:, None]
    # Evaluate at pixel centres relative to the box corner to keep float32 precise.
    ox, oy = j0 + 0.5, i0 + 0.5
    C = C + A * ox[:, None] + B * oy[:, None]
    # Depth plane in the same local frame: d(px, py) = Dx px + Dy py + D0.
    Dx = (A * zl).sum(1)
    Dy = (B * zl).sum(1)
    D0 = (C * zl).sum(1)

    # Quantise depth into 32 bits over the drawn range (in 1/z, nearest = largest).
    dmin, dmax = float(zl.min()), float(zl.max())
    span = max(dmax - dmin, 1e-12)
    scale = (2**31 - 2) / span

    keys = np.full(H * W, np.iinfo(np.int64).max, np.int64)
    bw = j1 - j0 + 1
    bh = i1 - i0 + 1
    cw = _bin(bw)
    ch = _bin(bh)
    clipped = (j0 + cw > W) | (i0 + ch > H)
    A32, B32, C32 = A.astype(np.float32), B.astype(np.float32), C.astype(np.float32)
    f32 = np.float32
    for gw in np.unique(cw):
        for gh in np.unique(ch[cw == gw]):
            sel = np.nonzero((cw == gw) & (ch == gh))[0]
            per = max(1, _BLOCK // int(gw * gh))
            gx = np.arange(gw, dtype=f32)[None, None, :]
            gy = np.arange(gh, dtype=f32)[None, :, None]
            for s in range(0, len(sel), per):
                t = sel[s: s + per]
                # A*x is (n, 1, gw) and B*y + C is (n, gh, 1): one full-size add per edge.
                # Pixels of the block outside the triangle's own box fail an edge test anyway.
                inside = None
                for k in range(3):
                    ax = A32[t, k, None, None] * gx
                    byc = B32[t, k, None, None] * gy + C32[t, k, None, None]
                    ok_k = np.add(ax, byc) >= _EPS
                    inside = ok_k if inside is None else np.logical_and(inside, ok_k, out=inside)
                n, ry, rx = np.nonzero(inside)
                if len(n) == 0:
                    continue
                tn = t[n]
                if clipped[t].any():          # blocks hanging over the image border
                    keep = ((j0[tn] + rx) < W) & ((i0[tn] + ry) < H)
                    n, ry, rx, tn = n[keep], ry[keep], rx[keep], tn[keep]
                d = Dx[tn] * rx + Dy[tn] * ry + D0[tn]
                if perspective:                      # nearest = largest 1/z
                    q = np.clip((dmax - d) * scale, 0, 2**31 - 2)
                else:
                    q = np.clip((d - dmin) * scale, 0, 2**31 - 2)
                pix = (i0[tn] + ry) * W + (j0[tn] + rx)
                key = (q.astype(np.int64) << 31) | tn
                np.minimum.at(keys, pix, key)

    hit = keys != np.iinfo(np.int64).max
    win = (keys[hit] & ((1 << 31) - 1)).astype(np.int64)      # index into idx
    pix = np.nonzero(hit)[0]
    py, px = np.divmod(pix, W)
    cx = px - j0[win]
    cy = py - i0[win]
    b = A[win] * cx[:, None] + B[win] * cy[:, None] + C[win]
    b = np.clip(b, 0.0, None)
    b /= b.sum(1, keepdims=True)
    dl = (b * zl[win]).sum(1)
    if perspective:
        b = b * zl[win]                          # weights / z_k, renormalised
        b /= b.sum(1, keepdims=True)
        dl = 1.0 / dl
    tri_id.ravel()[pix] = idx[win]
    bary.reshape(-1, 3)[pix] = b
    depth.ravel()[pix] = dl
    return Raster(tri_id, bary, depth)


def rasterize_uv(uvs, tri_uv, size: int):
    """Rasterise a mesh's UV layout into a size x size texture grid.

    Texture rows are top-down with the top row at v = 1 (the PNG convention that Blender reads
    back correctly): texel (row i, column j) samples u = (j + 0.5) / size,
    v = 1 - (i + 0.5) / size. Returns (tri_id (size, size) int32, bary (size, size, 3) float32);
    tri_id indexes the rows of tri_uv (and of the matching vertex triangles).
    """
    uvs = np.asarray(uvs, np.float64)
    pts = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size, np.zeros(len(uvs))], 1)
    r = rasterize(pts, tri_uv, size, size)
    return r.tri_id, r.bary


_BINS = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64])


def _bin(n: np.ndarray) -> np.ndarray:
    """Block size for a box side: 1, 2, 3, 4, 6, 8 ... 64, then powers of two."""
    out = _BINS[np.minimum(np.searchsorted(_BINS, n), len(_BINS) - 1)]
    big = n > _BINS[-1]
    out[big] = 1 << np.ceil(np.log2(n[big])).astype(np.int64)
    return out
