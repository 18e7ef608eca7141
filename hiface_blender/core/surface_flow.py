"""Skin points followed through a clip by optical flow, anchored on the fitted face's surface.

The landmark detector places its points anew in every frame, and its error on smooth or
weakly marked skin (inner brows, cheeks) moves with the expression. The skin's own texture
(brow hairs, pores, freckles, lip lines) moves with the surface. Corners of that texture are
picked in one reference frame, tied to the surface point of the fitted face under them, and
followed into every frame: the reference patch, warped by the motion of its triangle between
the two frames (so a turned head still matches), is matched by Lucas-Kanade around a first guess
of where the point is, with the patch's brightness gain, offset and ramp left free. A patch that
no longer correlates with its template is dropped for that frame. The fit then moves each anchor
onto its flow position, as it moves landmarks onto the detector's.

No bpy, no torch: numpy and OpenCV.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .landmark_noise import ICT_TO_CV_MM
from .model_data import NARROW_FACE_STOP
from .synthetic import camera_vertices


@dataclass
class SurfaceFlow:
    tri_vertices: np.ndarray   # (M, 3) int, ICT vertices of each anchor's triangle
    bary: np.ndarray           # (M, 3) float32, the anchor's weights in that triangle
    points: np.ndarray         # (F, M, 2) float32 px, flow positions per frame
    valid: np.ndarray          # (F, M) bool


def _project(x, focal, c):
    return focal * x[..., :2] / np.maximum(x[..., 2:3], 1.0) + c


def _facing(a, b, d, x):
    """Cosine between triangles (a, b, d) (..., 3) camera-frame corners and the direction from
    their point x to the camera: 1 faces it, 0 is edge-on."""
    nrm = np.cross(b - a, d - a)
    return -(nrm * x).sum(-1) / (np.linalg.norm(nrm, axis=-1) * np.linalg.norm(x, axis=-1) + 1e-12)


def _pick_anchors(model, gray, cam, focal, c, n_max: int, min_distance: int, region: np.ndarray):
    import cv2

    from .raster import rasterize

    h, w = gray.shape
    px = _project(cam, focal, c)
    # Only the region's own triangles: what hides a face point from the camera is the face
    # (the nose, a cheek), and the eye openings are holes in it.
    tris = model.tris[np.all(region[model.tris], axis=1)]
    ras = rasterize(np.c_[px, cam[:, 2]], tris, h, w, perspective=True)
    a, b, d = (cam[tris[:, k]] for k in range(3))
    tri_ok = _facing(a, b, d, (a + b + d) / 3.0) > 0.3
    ok_px = (ras.tri_id >= 0) & tri_ok[np.maximum(ras.tri_id, 0)]
    mask = cv2.erode(ok_px.astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    corners = cv2.goodFeaturesToTrack(gray, maxCorners=n_max, qualityLevel=0.005,
                                      minDistance=min_distance, mask=mask, blockSize=5)
    if corners is None:
        return None
    p = corners.reshape(-1, 2) + 0.5                     # OpenCV pixel centres -> continuous
    ij = np.clip(np.floor(p).astype(int), 0, [w - 1, h - 1])
    tri = ras.tri_id[ij[:, 1], ij[:, 0]]
    keep = tri >= 0
    p, tri = p[keep], tri[keep]
    tv = tris[tri]
    # Screen-space barycentrics of the corner in its triangle.
    q = px[tv]                                           # (M, 3, 2)
    m = np.stack([q[:, 0] - q[:, 2], q[:, 1] - q[:, 2]], -1)   # (M, 2, 2)
    l01 = np.linalg.solve(m, (p - q[:, 2])[..., None])[..., 0]
    bary = np.c_[l01, 1.0 - l01.sum(1)].astype(np.float32)
    return tv, bary


def surface_flow(model, identity, reference: dict, expression, rotation, translation,
                 focal: float, c, grays: list, ref_gray: np.ndarray, n_max: int = 120,
                 min_score: float = 0.8, win: int = 11, max_shift: float = 6.0,
                 chunk: int = 64) -> SurfaceFlow | None:
    """Anchors picked in a reference frame and followed into every frame.

    reference: the reference frame's fit, {"expression", "rotation", "translation"}, and its
    image ref_gray. expression (F, K), rotation (F, 3, 3), translation (F, 3): where each frame
    is thought to be (a first guess: the flow is searched around it); grays: the frames, uint8
    (H, W). Each anchor's patch in the reference is warped by its triangle's motion between the
    two frames, so a turned head does not defeat the match. None when the reference frame has
    no texture to follow."""
    import cv2

    n = len(grays)
    c = np.asarray(c, np.float64)
    region = np.arange(model.n_vertices) < NARROW_FACE_STOP   # the face itself, not the neck
    cam_ref = camera_vertices(model, identity, reference["expression"], reference["rotation"],
                              reference["translation"]).astype(np.float64)
    picked = _pick_anchors(model, ref_gray, cam_ref, focal, c, n_max, 6, region)
    if picked is None:
        return None
    tv, bary = picked
    m = len(tv)
    uniq, inv = np.unique(tv, return_inverse=True)
    inv = inv.reshape(tv.shape)
    tri_ref = _project(cam_ref[tv], focal, c)                 # (M, 3, 2)
    base = (model.neutral[uniq] + np.tensordot(identity, model.id_basis[:, uniq], 1)).reshape(-1)
    exp_rows = model.exp_basis[:, uniq].reshape(model.exp_basis.shape[0], -1)
    p_ref = (tri_ref * bary[:, :, None]).sum(1)
    a_r = np.stack([tri_ref[:, 0] - tri_ref[:, 2], tri_ref[:, 1] - tri_ref[:, 2]], -1)
    half = win // 2
    grid = np.stack(np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1)), -1)
    grid = grid.reshape(-1, 2).astype(np.float32)        # (P, 2)
    ref_img = ref_gray.astype(np.float32)
    ref_stack = np.dstack([ref_img, cv2.Sobel(ref_img, cv2.CV_32F, 1, 0, ksize=1, scale=0.5),
                           cv2.Sobel(ref_img, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)])
    h, w = ref_gray.shape
    pts = np.zeros((n, m, 2), np.float32)
    valid = np.zeros((n, m), bool)
    chunk = max(1, min(chunk, 32000 // h))    # frames stacked in one image for OpenCV's remap
    for a in range(0, n, chunk):
        sel = np.arange(a, min(a + chunk, n))
        v = (base + np.asarray(expression[sel]) @ exp_rows).reshape(len(sel), -1, 3) * ICT_TO_CV_MM
        cam = v @ np.asarray(rotation[sel]).transpose(0, 2, 1) + np.asarray(translation[sel])[:, None]
        corner = cam[:, inv]                                                     # (S, M, 3, 3)
        x = (corner * bary[None, :, :, None]).sum(2)
        ok = _facing(corner[:, :, 0], corner[:, :, 1], corner[:, :, 2], x) > 0.2
        tri = _project(corner, focal, c)
        pred = (tri * bary[None, :, :, None]).sum(2)                             # (S, M, 2)
        # The affine map of each anchor's triangle from each frame's screen to the reference's.
        a_i = np.stack([tri[..., 0, :] - tri[..., 2, :], tri[..., 1, :] - tri[..., 2, :]], -1)
        det = np.linalg.det(a_i)
        ok &= np.abs(det) > 1e-3
        inside = np.all((pred > half + 2) & (pred < np.array([w, h]) - half - 2), -1)
        ok &= inside
        A = a_r[None] @ np.linalg.inv(np.where(ok[..., None, None], a_i, np.eye(2)))
        src = p_ref[None, :, None, :] + grid @ A.transpose(0, 1, 3, 2)          # (S, M, P, 2)
        template = _sample(ref_stack, src)                                      # (S, M, P, 3)
        # The template's gradient in this frame's pixels: the reference's, through the warp.
        grad = template[..., 1:] @ A                                             # (S, M, P, 2)
        template = template[..., 0]
        # The chunk's frames one under the other: frame j's rows start at j * h.
        tall = np.concatenate([grays[i] for i in sel]).astype(np.float32)
        centre = (pred + np.c_[np.zeros(len(sel)), np.arange(len(sel)) * h][:, None]).reshape(-1, 2)
        d, score = _lk_translation(tall, centre, grid, template.reshape(-1, len(grid)),
                                   grad.reshape(-1, len(grid), 2))
        pts[sel] = pred + d.reshape(len(sel), m, 2)
        valid[sel] = (ok & (score.reshape(len(sel), m) > min_score)
                      & (np.linalg.norm(d, axis=1).reshape(len(sel), m) < max_shift))
    return SurfaceFlow(tri_vertices=tv, bary=bary, points=pts, valid=valid)


def _sample(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of img (H, W) or (H, W, C) at continuous coordinates xy (..., P, 2)
    (pixel centres at +0.5): (..., P) or (..., P, C)."""
    import cv2

    shape = xy.shape[:-1] + img.shape[2:]
    flat = xy.reshape(-1, xy.shape[-2], 2)
    mx = np.ascontiguousarray(flat[..., 0], dtype=np.float32) - 0.5
    my = np.ascontiguousarray(flat[..., 1], dtype=np.float32) - 0.5
    out = np.empty(flat.shape[:2] + img.shape[2:], np.float32)
    for r0 in range(0, len(flat), 32000):     # OpenCV's maps stay under 32767 on a side
        out[r0:r0 + 32000] = cv2.remap(img, mx[r0:r0 + 32000], my[r0:r0 + 32000],
                                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(shape)


def _lk_translation(img, centre, grid, template, template_grad, iters: int = 8):
    """Per patch, the shift d (N, 2) that best matches img around centre + d to the template
    (N, P) up to a gain, an offset and a linear ramp of brightness across the patch (the
    shading of a turned surface changes across it). Inverse compositional Lucas-Kanade with
    those brightness terms projected out: the steepest descent images come from the template's
    gradient (N, P, 2), so each step is one sample of the image and two dot products per patch.
    Returns d and the patches' correlation with the template after the last step, offset and
    ramp taken out of both."""
    n, p = template.shape
    t = template.astype(np.float32)
    grid = grid.astype(np.float32)
    centre = centre.astype(np.float32)
    g = grid / max(float(np.abs(grid).max()), 1.0)
    ramp = np.c_[np.ones(p), g].astype(np.float32)                            # (P, 3)
    # Orthonormal basis of each patch's brightness model: the ramp (shared), then the
    # template's part outside it.
    qr = np.linalg.qr(ramp)[0].astype(np.float32)                             # (P, 3)
    tc = t - (t @ qr) @ qr.T
    qt = tc / np.maximum(np.linalg.norm(tc, axis=1, keepdims=True), 1e-6)
    sd = template_grad.astype(np.float32)                                     # (N, P, 2)
    sd = sd - np.tensordot(np.tensordot(sd, qr, ([1], [0])), qr, ([2], [1])).transpose(0, 2, 1)
    sd -= qt[..., None] * (qt[..., None] * sd).sum(1, keepdims=True)
    sx, sy = np.ascontiguousarray(sd[..., 0]), np.ascontiguousarray(sd[..., 1])
    h00, h01, h11 = (sx * sx).sum(1) + 1e-3, (sx * sy).sum(1), (sy * sy).sum(1) + 1e-3
    det = h00 * h11 - h01 * h01
    d = np.zeros((n, 2), np.float32)
    tnorm = np.maximum(np.linalg.norm(tc, axis=1), 1e-6)
    active = np.arange(n)
    for _ in range(iters):
        # Patches whose last step was under a hundredth of a pixel are done.
        i_ = _sample(img, centre[active, None, :] + d[active, None, :] + grid[None])
        # The template is inside the projected-out span, so the image alone gives the step.
        b0, b1 = (sx[active] * i_).sum(1), (sy[active] * i_).sum(1)
        step = np.stack([h11[active] * b0 - h01[active] * b1,
                         h00[active] * b1 - h01[active] * b0], 1) / det[active, None]
        # The gain scales the image's response to a shift: divide it out.
        gain = np.maximum((qt[active] * i_).sum(1) / tnorm[active], 0.2)
        step = np.clip(step / gain[:, None], -2.0, 2.0)
        d[active] -= step
        active = active[np.abs(step).max(1) > 0.01]
        if len(active) == 0:
            break
    i_ = _sample(img, centre[:, None, :] + d[:, None, :] + grid[None])
    ic = i_ - (i_ @ qr) @ qr.T
    score = (ic * tc).sum(1) / np.sqrt(np.maximum((ic * ic).sum(1) * (tc * tc).sum(1), 1e-12))
    return d, score
