"""Build-time calibration of where MediaPipe's landmarks sit on the ICT surface.

The canonical-geometry embedding (correspondence.py) fixes the gross proportions, but the
detector still places some points consistently off the model's (brows and nose lower, lip
corners higher): a per-landmark bias that the fit would otherwise absorb by bending identity
and expression. Here each non-contour, non-iris landmark is moved over the nearby face surface
to the spot that best explains the detector's output on synthetic renders with known geometry
(seeds disjoint from the evaluation's). The same renders, with more, then give each point's
offset from the surface (the detector's points are not all on the skin) and the detector's
error model that the fit weighs landmarks by (landmark_noise.py). Deterministic for a given model
and detector.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .model_data import FaceModelData

CALIBRATION_SEED = 20261121
CALIBRATION_RENDERS = 40
# The detector's error model needs more faces than the placement: more renders, other seeds
# (still disjoint from the evaluation's), pooled with the calibration's own.
NOISE_SEED = 20261122
NOISE_RENDERS = 460
# The landmark offsets are learned from the calibration renders and the first of these only: the
# tracker's figures depend on the offsets more than on the error model, and more renders moved
# them (0.19 mm on average) in ways that cost the tracked head pose and gaze.
OFFSET_NOISE_RENDERS = 160
DETECT_THREADS = 2
SEARCH_RADIUS_CM = 1.2
BARY_STEPS = 6


def _bary_grid(steps: int) -> np.ndarray:
    g = [(a, b, steps - a - b) for a in range(steps + 1) for b in range(steps + 1 - a)]
    return np.array(g, np.float64) / steps


def refine_embedding(data: FaceModelData, cases, detections, log=print) -> FaceModelData:
    """cases: synthetic cases (identity, expression, rotation, translation, K); detections: (478, 2)
    pixel landmarks per case. Returns the model data with mp_tri / mp_bary refined."""
    from .synthetic import camera_vertices

    face_mat = list(data.material_names).index("M_Face")
    face_tris = np.flatnonzero(data.poly_material[data.tri_poly] == face_mat)
    centroids = data.neutral[data.tris[face_tris]].mean(1)
    grid = _bary_grid(BARY_STEPS)
    cams = [camera_vertices(data, c.identity, c.expression, c.rotation, c.translation).astype(np.float64)
            for c in cases]
    iods = [np.linalg.norm(d[33] - d[263]) for d in detections]
    skip = set(int(i) for i in data.contour_mp) | set(range(468, 478))
    current = data.landmark_skin_points(data.neutral)
    mp_tri, mp_bary = data.mp_tri.copy(), data.mp_bary.copy()
    moved = []
    for lm in range(478):
        if lm in skip:
            continue
        near = face_tris[np.linalg.norm(centroids - current[lm], axis=1) < SEARCH_RADIUS_CM]
        if len(near) == 0:
            continue
        cost = np.zeros((len(near), len(grid)))
        for cam, det, case, iod in zip(cams, detections, cases, iods):
            p = np.einsum("gk,tkc->tgc", grid, cam[data.tris[near]])
            px = p[..., :2] / p[..., 2:] * case.K[0, 0] + case.K[:2, 2]
            cost += ((px - det[lm]) ** 2).sum(-1) / iod ** 2
        t, g = np.unravel_index(cost.argmin(), cost.shape)
        mp_tri[lm], mp_bary[lm] = near[t], grid[g]
        moved.append(np.linalg.norm((data.neutral[data.tris[near[t]]] * grid[g][:, None]).sum(0) - current[lm]))
    moved = np.array(moved) * 10.0
    log(f"  calibration moved {len(moved)} landmarks: mean {moved.mean():.2f} mm, max {moved.max():.2f} mm")
    return dataclasses.replace(data, mp_tri=mp_tri.astype(np.int32), mp_bary=mp_bary.astype(np.float32))


OFFSET_RIDGE = 0.01   # share of a landmark's mean information added as a prior on its offset


def _rigid_part(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The small rotation and translation of `points` (P, 3) closest to `offsets` (P, 3)."""
    c = points - points.mean(0)
    a = np.zeros((len(c), 3, 6))
    a[:, :, :3] = np.stack([np.zeros(len(c)), c[:, 2], -c[:, 1], -c[:, 2], np.zeros(len(c)), c[:, 0],
                            c[:, 1], -c[:, 0], np.zeros(len(c))], 1).reshape(-1, 3, 3)   # w x c
    a[:, :, 3:] = np.eye(3)
    x = np.linalg.lstsq(a.reshape(-1, 6), offsets.reshape(-1), rcond=None)[0]
    return (a.reshape(-1, 6) @ x).reshape(-1, 3)


def learn_landmark_offsets(data: FaceModelData, cases, detections, log=print) -> FaceModelData:
    """Each fixed-point landmark's 3D offset from its surface point, constant in the head's frame.

    The surface search above can only slide a point over the skin; the detector behaves as if
    some points sat in front of or behind it (the brows, the nose), which shows as an error that
    grows with the head's yaw and pitch. Per landmark, the offset that best explains the
    detections over renders in many poses: a linear least-squares solve through the projection's
    Jacobian at the true point, lightly ridge-regularised."""
    from .landmark_noise import ICT_TO_CV_MM, noise_landmarks
    from .synthetic import case_landmarks

    ids = noise_landmarks(data.contour_mp)
    normal = np.zeros((len(ids), 3, 3))
    rhs = np.zeros((len(ids), 3))
    for case, det in zip(cases, detections):
        pts, px = case_landmarks(data, case, ids)
        f = float(case.K[0, 0])
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        jac = np.zeros((len(ids), 2, 3))
        jac[:, 0, 0] = jac[:, 1, 1] = f / z
        jac[:, 0, 2], jac[:, 1, 2] = -f * x / z ** 2, -f * y / z ** 2
        jac = jac @ np.asarray(case.rotation, np.float64) * ICT_TO_CV_MM
        weight = 1.0 / np.linalg.norm(det[33] - det[263]) ** 2    # in eye distances
        normal += weight * np.einsum("pki,pkj->pij", jac, jac)
        rhs += weight * np.einsum("pki,pk->pi", jac, det[ids] - px)
    prior = OFFSET_RIDGE * np.trace(normal, axis1=1, axis2=2) / 3.0
    offsets = np.linalg.solve(normal + prior[:, None, None] * np.eye(3), rhs[..., None])[..., 0]
    # Keep only how the points sit relative to each other. A common small rotation of them all is
    # the detector's average pose bias on these renders (their light and cameras), and it moved
    # every tracked head's pitch by about 0.9 deg (six synthetic performers).
    offsets = offsets - _rigid_part(data.landmark_skin_points(data.neutral, ids).astype(np.float64), offsets)
    full = data.mp_offset.astype(np.float64).copy()
    full[ids] += offsets
    size = np.linalg.norm(offsets, axis=1) * 10.0
    log(f"  landmark offsets from the surface: mean {size.mean():.2f} mm, max {size.max():.2f} mm")
    return dataclasses.replace(data, mp_offset=full.astype(np.float32))


def learn_detector_noise(data: FaceModelData, cases, detections, log=print) -> FaceModelData:
    """The detector's error on renders with known geometry, in the face frame, as the fit's
    landmark covariance (landmark_noise.py)."""
    from .landmark_noise import learn_noise, model_frame_offsets, noise_landmarks
    from .synthetic import case_landmarks

    ids = noise_landmarks(data.contour_mp)
    offsets = []
    for case, det in zip(cases, detections):
        pts, px = case_landmarks(data, case, ids)
        offsets.append(model_frame_offsets(pts[:, 2:3], np.asarray(case.rotation, np.float64),
                                           case.K[0, 0], det[ids] - px))
    offsets = np.array(offsets)
    basis, diag = learn_noise(offsets)
    log(f"  detector error on {len(offsets)} renders: {np.sqrt((offsets ** 2).sum(-1).mean()) * 10:.2f} mm rms "
        f"per landmark; {len(basis)} directions hold {(basis ** 2).sum() / ((basis ** 2).sum() + diag.sum()):.0%}")
    return dataclasses.replace(data, mp_noise_ids=ids, mp_noise_basis=basis, mp_noise_diag=diag)


def _render_and_detect(data, detectors, skin, n, seed, start=0):
    """Render cases start..n-1 of the seed and detect them, the cases split over the detectors,
    one thread each (rendering and MediaPipe both release Python's lock for most of their time).
    The result is in the cases' order whatever the threads' timing."""
    from concurrent.futures import ThreadPoolExecutor

    from .synthetic import render_case, synthetic_cases

    cases = [case for i, case in synthetic_cases(data, n, seed) if i >= start]

    def run(k):
        found = {}
        for i in range(k, len(cases), len(detectors)):
            try:
                found[i] = detectors[k].detect(render_case(data, cases[i], skin)).points[:, :2]
            except Exception:  # a render the detector misses teaches nothing
                pass
        return found

    with ThreadPoolExecutor(len(detectors)) as pool:
        found = {}
        for part in pool.map(run, range(len(detectors))):
            found.update(part)
    keep = sorted(found)
    return [cases[i] for i in keep], [found[i].astype(np.float64) for i in keep]


def calibrate(data: FaceModelData, landmarker_task, log=print,
              n: int = CALIBRATION_RENDERS, seed: int = CALIBRATION_SEED,
              n_noise: int = NOISE_RENDERS, noise_seed: int = NOISE_SEED,
              n_offset_noise: int = OFFSET_NOISE_RENDERS) -> FaceModelData:
    """Render faces with known geometry using a skin texture unwrapped from a real photo (the
    scikit-image astronaut) by the uncalibrated pipeline, detect them, refine the landmark
    placement, then learn the detector's error model with the refined placement."""
    from .face_model import FaceModel
    from .fitting import FitSettings, fit_landmarks
    from .landmarks import LandmarkDetector, scores_to_ict
    from .result import AXES_ICT_TO_CV
    from .texture import extract_texture
    from skimage import data as samples

    detectors = [LandmarkDetector(landmarker_task) for _ in range(DETECT_THREADS)]
    detector = detectors[0]
    try:
        photo = np.ascontiguousarray(samples.astronaut())
        det = detector.detect(photo)
        fit = fit_landmarks(FaceModel(data), det.points[:, :2], det.kind,
                            scores_to_ict(det.scores, det.score_names, data.exp_names),
                            photo.shape[:2], FitSettings())
        v = (data.neutral + np.tensordot(fit.identity, data.id_basis, 1)
             + np.tensordot(fit.expression, data.exp_basis, 1))
        cam = (v * AXES_ICT_TO_CV * 10.0) @ fit.rotation.T + fit.translation
        # Her suit collar stays on the neck (below every landmark), as in the synthetic truths:
        # the calibration is what it was before clothing was filled.
        skin, _ = extract_texture(photo, cam, fit.intrinsics, data, size=1024, neck_occluders=False)
        cases, detections = _render_and_detect(data, detectors, skin, n, seed)
        log(f"  calibration renders: {len(cases)} of {n} detected")
        n_offset = min(n_offset_noise, n_noise)
        offset_cases, offset_detections = _render_and_detect(data, detectors, skin, n_offset, noise_seed)
        more_cases, more_detections = _render_and_detect(data, detectors, skin, n_noise, noise_seed,
                                                         start=n_offset)
    finally:
        for d in detectors:
            d.close()
    data = refine_embedding(data, cases, detections, log=log)
    data = learn_landmark_offsets(data, cases + offset_cases, detections + offset_detections, log=log)
    return learn_detector_noise(data, cases + offset_cases + more_cases,
                                detections + offset_detections + more_detections, log=log)
