"""Fixed correspondence from MediaPipe's 478 landmarks to the ICT surface (build time).

MediaPipe's points are defined on its own canonical mesh, whose proportions differ from ICT's.
Rather than a rigid alignment plus nearest vertex (which leaves a bias no fitting removes), the
ICT model itself (identity + expression) is fitted to the canonical geometry, and each canonical
vertex is then embedded barycentrically on the fitted ICT surface. The embedding transfers to any
ICT face because it lives in ICT's topology. Iris points go onto ICT's iris vertices; the face
oval gets per-point candidate curves so the fitter can slide it along the occluding contour.
"""
from __future__ import annotations

import numpy as np

from .geometry import closest_points_on_triangles, similarity_transform
from .model_data import IRIS_L, IRIS_R, NARROW_FACE_STOP

# MediaPipe index -> Multi-PIE 68 index, for the initial alignment only.
MP_TO_68 = {
    33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54, 0: 51, 17: 57, 13: 62, 14: 66,
    152: 8, 168: 27, 4: 30, 2: 33, 105: 19, 334: 24, 107: 21, 336: 22,
}
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67,
             109)
# Iris landmarks: centre, then +x, +y (up), -x, -y in the face's own frame.
IRIS_RIGHT_MP = (468, 469, 470, 471, 472)  # subject's right eye (x < 0)
IRIS_LEFT_MP = (473, 474, 475, 476, 477)
N_CANDIDATES = 64


def _fit_ict_to_points(arrays, targets_idx, target_pts, canon, face_tris, log, iters=400):
    """Fit ICT identity+expression (and a similarity on the canonical points) to the canonical mesh."""
    import torch

    dt = torch.float64
    stop = 9409
    v0 = torch.tensor(arrays["neutral"][:stop], dtype=dt)
    bid = torch.tensor(arrays["id_basis"][:, :stop], dtype=dt)
    bex = torch.tensor(arrays["exp_basis"][:, :stop], dtype=dt)
    canon_t = torch.tensor(canon, dtype=dt)
    idc = torch.zeros(bid.shape[0], dtype=dt, requires_grad=True)
    exl = torch.full((bex.shape[0],), -4.0, dtype=dt, requires_grad=True)  # sigmoid -> ~0.02
    opt = torch.optim.Adam([idc, exl], lr=0.05)
    tgt_idx = torch.tensor(targets_idx)
    tgt = torch.tensor(target_pts, dtype=dt)
    from scipy.spatial import cKDTree

    nn = None
    for it in range(iters):
        v = v0 + torch.einsum("k,kvc->vc", idc, bid) + torch.einsum("k,kvc->vc", torch.sigmoid(exl), bex)
        if it % 50 == 0:
            vn = v.detach().numpy()
            nn = torch.tensor(cKDTree(vn[:NARROW_FACE_STOP]).query(canon)[1])
        chamfer = ((v[nn] - canon_t) ** 2).sum(1).mean()
        anchor = ((v[tgt_idx] - tgt) ** 2).sum(1).mean()
        loss = chamfer + anchor + 1e-3 * (idc ** 2).sum() + 1e-3 * torch.sigmoid(exl).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    log(f"  canonical fit: chamfer {chamfer.item() ** 0.5:.3f} cm rms, anchors {anchor.item() ** 0.5:.3f} cm rms")
    full = (arrays["neutral"] + np.tensordot(idc.detach().numpy(), arrays["id_basis"], 1)
            + np.tensordot(torch.sigmoid(exl).detach().numpy(), arrays["exp_basis"], 1))
    return full


def _iris_points(arrays, full, rng, mp_ids):
    """(vertex index per MediaPipe iris landmark) on the ICT iris: centre and 4 rim points."""
    a, b = rng
    idx = np.arange(a, b)
    p = full[idx]
    front = idx[p[:, 2] >= np.percentile(p[:, 2], 60)]
    centre_xy = full[front, :2].mean(0)
    r = np.linalg.norm(full[front, :2] - centre_xy, axis=1)
    centre = front[np.argmin(r - 1e-3 * full[front, 2])]
    rim = front[r >= 0.8 * r.max()]
    out = {mp_ids[0]: centre}
    for mp_id, d in zip(mp_ids[1:], ((1, 0), (0, 1), (-1, 0), (0, -1))):
        rel = full[rim, :2] - centre_xy
        out[mp_id] = rim[np.argmax(rel @ np.array(d, float))]
    return out


def _contour_candidates(full, mp_pos, face_verts, centre_xy):
    """Vertices each oval landmark may slide to: a curve across the cheek/forehead through it."""
    out = np.zeros((len(FACE_OVAL), N_CANDIDATES), np.int32)
    pv = full[face_verts]
    for i, p in enumerate(mp_pos):
        radial = np.array([p[0] - centre_xy[0], p[1] - centre_xy[1], 0.0])
        radial /= max(np.linalg.norm(radial), 1e-9)
        normal = np.cross(radial, [0.0, 0.0, 1.0])
        d = pv - p
        along = d @ radial
        ok = (np.abs(d @ normal) < 0.45) & (np.linalg.norm(d, axis=1) < 5.0) & (along > -2.5)
        cand = face_verts[ok]
        if len(cand) == 0:
            cand = face_verts[[np.argmin(np.linalg.norm(d, axis=1))]]
        # Keep an even spread along the curve, ordered by distance from the face centre.
        order = np.argsort((full[cand] - p) @ radial)
        cand = cand[order]
        pick = np.linspace(0, len(cand) - 1, N_CANDIDATES).round().astype(int)
        out[i] = cand[pick]
    return out


def register_mediapipe(arrays: dict, canon_v: np.ndarray, canon_f: np.ndarray, log=print) -> dict:
    lm68 = arrays["landmarks68"]
    neutral = arrays["neutral"]
    mp_ids = np.array(list(MP_TO_68))
    ict_ids = lm68[[MP_TO_68[i] for i in mp_ids]]
    s, r, t = similarity_transform(canon_v[mp_ids], neutral[ict_ids])
    canon = canon_v @ (s * r).T + t
    face_tris = arrays["tris"][(arrays["tris"] < 9409).all(1)]
    full = _fit_ict_to_points(arrays, ict_ids, canon[mp_ids], canon, face_tris, log)
    # Re-align the canonical points to the fitted face, then embed on its surface.
    s, r, t = similarity_transform(canon_v, _nearest_on(full, face_tris, canon))
    canon = canon_v @ (s * r).T + t
    tri_local, bary, dist = closest_points_on_triangles(canon, full, face_tris)
    log(f"  embedding distance: mean {dist.mean():.3f} cm, max {dist.max():.3f} cm")
    # Map face-triangle indices back to indices in the full triangle list.
    face_tri_ids = np.nonzero((arrays["tris"] < 9409).all(1))[0]
    mp_tri = np.zeros(478, np.int32)
    mp_bary = np.zeros((478, 3), np.float32)
    mp_tri[:468] = face_tri_ids[tri_local]
    mp_bary[:468] = bary
    tris = arrays["tris"]
    for rng, ids in ((IRIS_R, IRIS_RIGHT_MP), (IRIS_L, IRIS_LEFT_MP)):
        for mp_id, vid in _iris_points(arrays, full, rng, ids).items():
            ti = int(np.nonzero((tris == vid).any(1))[0][0])
            mp_tri[mp_id] = ti
            mp_bary[mp_id, list(tris[ti]).index(vid)] = 1.0
    face_verts = np.arange(0, 11248)  # face + head/neck: the contour may slide to the ear
    mp_pos = (full[tris[mp_tri[list(FACE_OVAL)]]] * mp_bary[list(FACE_OVAL), :, None]).sum(1)
    centre_xy = full[lm68[30], :2]
    cand = _contour_candidates(full, mp_pos, face_verts, centre_xy)
    return dict(mp_tri=mp_tri, mp_bary=mp_bary, mp_offset=np.zeros((478, 3), np.float32),
                contour_mp=np.array(FACE_OVAL, np.int32), contour_candidates=cand)


def _nearest_on(full, face_tris, pts):
    tri, bary, _ = closest_points_on_triangles(pts, full, face_tris)
    return (full[face_tris[tri]] * bary[:, :, None]).sum(1)
