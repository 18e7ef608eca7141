"""Accuracy measurements of the photo -> face pipeline, printed as JSON.

    python -m hiface_blender.evaluate synthetic --n 20 --seed 0
    python -m hiface_blender.evaluate real

synthetic: renders ICT faces with known coefficients (core.synthetic), reconstructs each with the
real Reconstructor and compares with the truth. Shape error: per-vertex distance in mm after a
least-squares similarity alignment (Umeyama with scale) of the reconstruction onto the truth,
averaged over a vertex region. The asserted region is the narrow face (ICT vertices 0..6705:
forehead to chin, cheek to cheek, no ears or neck, which one frontal photo does not constrain);
the whole face mask (0..9408, with ears and neck) is reported too. Two comparisons, each
consistent: posed (fitted identity + fitted expression vs true identity + true expression) and
neutral (fitted identity vs true identity, both with zero expression).

`--landmarks true` is a diagnostic: the detector's fixed-point landmarks are replaced by the true
surface points' projections (face oval, iris and scores stay as detected), which separates the
fitter's own error from the detector's. `--landmarks oval` is another: only the face-oval
landmarks move, each onto the true surface's occluding contour (the nearest visible point of the
true model's candidate curve for it, as the fit itself picks them), which bounds what an exact
silhouette or edge term could add. Each case also reports the detector's error in pixels.

real: landmark reprojection error of the fit, mean over the 478 points, in pixels and as a
fraction of the inter-ocular distance (outer eye corners 33-263 of the detected landmarks), on
the astronaut and on frames of each GRID clip.

tracking: the video tracker (core.tracking) on performances with known truth (core.performance:
the same expression curves and head motion performed by one random identity per seed; seed 7 is
the test suite's clip) and on the GRID clips. Synthetic: Pearson r of each performed curve and
the head rotation error; real: every frame tracked, jawOpen against the speaker's inner-lip gap
(MediaPipe's landmarks 13-14 over 33-263) and the retargeted face's own lip gap against it.
To read those: the rotation error's constant part over the clip against the performer's own tilt
(the rigid part of its face's difference from the average face), and jawOpen against the gap
where the lips are apart, with MediaPipe's own jawOpen score beside it.
`tracking --landmarks true` is the same diagnostic as the photo's, on the performances only: each
frame's fixed-point landmarks are replaced by the true surface points' projections.

gaze: where the fitted eyes look (core.gaze's eye angles, fitted against true): synthetic photos
with random gaze and the same photos looking ahead, and performances with eye movements.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .core.synthetic import synthetic_cases
from .core.video import frames_at

REGIONS = {"narrow_face": (0, 6706), "face": (0, 9409)}
PRIMARY_REGION = "narrow_face"
TARGETS = {"face_error_mm": 1.5, "expression_mae": 0.15, "reprojection_iod": 0.02,
           "curve_r": 0.85, "rotation_deg": 3.0, "jaw_lip_r": 0.9}
PERFORMANCE_SEEDS = (7, 11, 13, 17, 19, 23)
PERFORMANCE_CURVES = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R",
                      "browInnerUp_L", "browInnerUp_R", "mouthPucker")
GRID_CLIPS = ("bbaf2n", "brbk7n", "lbax4n", "lwbsza", "swiz3n")
GRID_FRAMES = (0, 25, 50)
OUTER_EYE = (33, 263)
LIPS_APART = 0.02      # inner-lip gap, eye distances, above which the lips count as apart


def aligned_error_mm(pred_cm: np.ndarray, true_cm: np.ndarray) -> np.ndarray:
    """Per-vertex distance (mm) after the similarity transform that best maps pred onto true."""
    from .core.geometry import similarity_transform

    p, t = pred_cm.astype(np.float64), true_cm.astype(np.float64)
    s, r, tr = similarity_transform(p, t)
    return np.linalg.norm((s * p @ r.T + tr) - t, axis=1) * 10.0


def reprojection(detected: np.ndarray, fitted: np.ndarray) -> dict:
    err = np.linalg.norm(np.asarray(fitted, np.float64) - np.asarray(detected, np.float64)[:, :2], axis=1)
    iod = float(np.linalg.norm(detected[OUTER_EYE[0], :2] - detected[OUTER_EYE[1], :2]))
    return {"px": float(err.mean()), "iod": float(err.mean() / iod), "iod_px": iod,
            "max_px": float(err.max())}


def make_reconstructor(quality: str = "standard", device: str = "auto"):
    from .core.reconstruct import ReconstructSettings, Reconstructor
    return Reconstructor(ReconstructSettings(device=device, quality=quality))


def true_landmarks(model, case) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (len(ids), 2) px): the fixed-point MediaPipe landmarks (no face oval, no iris) of a
    synthetic case, projected from the true surface."""
    from .core.landmark_noise import noise_landmarks
    from .core.synthetic import case_landmarks

    ids = noise_landmarks(model.contour_mp)
    return ids, case_landmarks(model, case, ids)[1]


def true_oval(model, case, points: np.ndarray) -> np.ndarray:
    """(C, 2) px: each detected face-oval landmark moved onto the case's true occluding contour,
    the nearest of its candidate curve's projected true vertices on the visible side of the fold."""
    import torch

    from .core.fitting import pick_contour
    from .core.synthetic import camera_vertices

    cam = camera_vertices(model, case.identity, case.expression, case.rotation,
                          case.translation).astype(np.float64)
    cand = cam[model.contour_candidates]                                  # (C, N, 3)
    px = cand[..., :2] / cand[..., 2:] * case.K[0, 0] + case.K[:2, 2]
    fixed = np.ones(len(points), bool)
    fixed[model.contour_mp] = False
    fixed[468:] = False                                                    # irises
    pick = pick_contour(torch.as_tensor(px[None]), torch.as_tensor(points[None, model.contour_mp, :2]),
                        torch.as_tensor(points[fixed, :2].mean(0)[None, None]))[0].numpy()
    return px[np.arange(len(pick)), pick]


class _TrueLandmarkDetector:
    """The real detector, with some of its landmarks moved onto the truth by `move(points)`
    (diagnostic); `detected` keeps what the detector itself found."""

    def __init__(self, detector, move) -> None:
        self.detector, self.move = detector, move

    def detect(self, rgb):
        import dataclasses

        det = self.detector.detect(rgb)
        self.detected = det.points[:, :2].copy()
        pts = det.points.copy()
        self.move(pts)
        return dataclasses.replace(det, points=pts)


def evaluate_case(rec, model, case, rgb, landmarks: str = "detected") -> dict:
    from .core.errors import HiFaceError
    from .core.landmarks import scores_to_ict
    from .core.synthetic import model_vertices

    ids, truth_px = true_landmarks(model, case)
    detector = rec.detector

    def fixed_to_truth(pts):
        pts[ids, :2] = truth_px

    def oval_to_contour(pts):
        pts[model.contour_mp, :2] = true_oval(model, case, pts)

    move = {"true": fixed_to_truth, "oval": oval_to_contour}.get(landmarks)
    swapped = _TrueLandmarkDetector(detector, move) if move is not None else None
    if swapped is not None:
        rec.detector = swapped
    t = time.perf_counter()
    try:
        res = rec.run(rgb)
    except HiFaceError as e:
        return {"detected": False, "error": str(e)}
    finally:
        rec.detector = detector
    seconds = time.perf_counter() - t
    zero = np.zeros_like(case.expression)
    true_posed = model_vertices(model, case.identity, case.expression)
    true_neutral = model_vertices(model, case.identity, zero)
    fit_neutral = res.neutral_vertices
    fit_posed = fit_neutral + np.tensordot(res.expression, model.exp_basis, 1)
    detected = swapped.detected if swapped is not None else res.landmarks_detected
    det_rms = float(np.sqrt(np.mean(np.sum((detected[ids].astype(np.float64) - truth_px) ** 2, 1))))
    out = {"detected": True, "seconds": seconds, "detector_error_px": det_rms,
           "detector_error_iod": det_rms / reprojection(detected, res.landmarks_fitted)["iod_px"]}
    for name, (a, b) in REGIONS.items():
        out[f"posed_{name}_mm"] = float(aligned_error_mm(fit_posed[a:b], true_posed[a:b]).mean())
        out[f"neutral_{name}_mm"] = float(aligned_error_mm(fit_neutral[a:b], true_neutral[a:b]).mean())
    err = np.abs(res.expression - case.expression)
    on = case.expression > 0
    init = scores_to_ict(res.arkit_scores, res.arkit_names, model.exp_names)
    out.update({
        "expression_mae": float(err.mean()),
        "expression_mae_active": float(err[on].mean()) if on.any() else 0.0,
        "expression_mae_mediapipe_init": float(np.abs(init - case.expression).mean()),
        "expression_abs_error": {str(model.exp_names[j]): float(err[j]) for j in np.flatnonzero(err > 0.1)},
        "reprojection_iod": reprojection(res.landmarks_detected, res.landmarks_fitted)["iod"],
        "focal_true": case.focal, "focal_fit": float(res.intrinsics[0, 0]),
        "depth_true_mm": float(case.translation[2]), "depth_fit_mm": float(res.translation[2]),
    })
    return out


def evaluate_synthetic(n: int = 20, seed: int = 0, reconstructor=None, quality: str = "standard",
                       device: str = "auto", save_dir: str | None = None,
                       landmarks: str = "detected") -> dict:
    from .core.synthetic import astronaut_skin_texture, render_case

    rec = reconstructor or make_reconstructor(quality, device)
    model = rec.model
    skin = astronaut_skin_texture(rec)
    cases = []
    for i, case in synthetic_cases(model, n, seed):
        rgb = render_case(model, case, skin)
        if save_dir:
            from PIL import Image
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(Path(save_dir) / f"synthetic_{seed}_{i:03d}.png")
        row = {"case": i, "yaw_deg": round(case.yaw_deg, 2), "pitch_deg": round(case.pitch_deg, 2),
               "roll_deg": round(case.roll_deg, 2),
               "active": {a: round(float(case.expression[list(model.exp_names).index(a)]), 3)
                          for a in case.active}}
        row.update(evaluate_case(rec, model, case, rgb, landmarks))
        cases.append(row)
    ok = [c for c in cases if c["detected"]]
    keys = [k for k in (ok[0] if ok else {})
            if isinstance(ok[0][k], float) and k not in ("seconds", "yaw_deg", "pitch_deg", "roll_deg")]
    mean = {k: float(np.mean([c[k] for c in ok])) for k in keys}
    summary = {
        "n": n, "seed": seed, "landmarks": landmarks, "quality": rec.settings.quality, "device": str(rec.device),
        "primary_region": PRIMARY_REGION,
        "region_vertices": {k: [a, b - 1] for k, (a, b) in REGIONS.items()},
        "detection_failures": len(cases) - len(ok),
        "mean": mean,
        "max_posed_face_error_mm": max((c[f"posed_{PRIMARY_REGION}_mm"] for c in ok), default=None),
        "median_seconds_per_case": float(np.median([c["seconds"] for c in ok])) if ok else None,
        "targets": {"face_error_mm": TARGETS["face_error_mm"], "expression_mae": TARGETS["expression_mae"]},
    }
    # The true-landmark diagnostic does not measure the product, so it never passes.
    summary["pass"] = bool(
        landmarks == "detected" and summary["detection_failures"] == 0 and ok
        and mean[f"posed_{PRIMARY_REGION}_mm"] <= TARGETS["face_error_mm"]
        and mean[f"neutral_{PRIMARY_REGION}_mm"] <= TARGETS["face_error_mm"]
        and mean["expression_mae"] <= TARGETS["expression_mae"])
    return {"summary": summary, "cases": cases}


def grid_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "grid"


def grid_clip(clip: str) -> Path:
    path = grid_dir() / f"{clip}.mpg"
    if not path.is_file():
        raise FileNotFoundError(f"GRID sample missing: {path}")
    return path


def real_images(frames=GRID_FRAMES, clips=GRID_CLIPS):
    from skimage import data

    yield "astronaut", np.ascontiguousarray(data.astronaut())
    for clip in clips:
        for i, rgb in frames_at(grid_clip(clip), frames).items():
            yield f"{clip}:{i}", rgb


def evaluate_real(reconstructor=None, quality: str = "standard", device: str = "auto",
                  frames=GRID_FRAMES) -> dict:
    rec = reconstructor or make_reconstructor(quality, device)
    rows = []
    for name, rgb in real_images(frames):
        res = rec.run(rgb)
        ours = reprojection(res.landmarks_detected, res.landmarks_fitted)
        fit = res.report["fit"]
        rows.append({"image": name, "size": list(rgb.shape[:2]),
                     "reprojection_px": ours["px"], "reprojection_iod": ours["iod"],
                     "iod_px": ours["iod_px"], "reprojection_max_px": ours["max_px"],
                     "report_reprojection_iod": fit.get("reprojection_iod_mean"),
                     "focal_px": fit.get("focal_px")})
    worst = max(rows, key=lambda r: r["reprojection_iod"])
    summary = {
        "n_images": len(rows), "quality": rec.settings.quality, "device": str(rec.device),
        "mean_reprojection_iod": float(np.mean([r["reprojection_iod"] for r in rows])),
        "max_reprojection_iod": worst["reprojection_iod"], "worst_image": worst["image"],
        "target_iod": TARGETS["reprojection_iod"],
    }
    summary["pass"] = bool(summary["max_reprojection_iod"] <= TARGETS["reprojection_iod"])
    return {"summary": summary, "images": rows}


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1])


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotation stacks (F, 3, 3), degrees."""
    r = np.einsum("fij,fkj->fik", np.asarray(a, np.float64), np.asarray(b, np.float64))
    cos = np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


def lip_and_eye_gaps(points: np.ndarray):
    """Inner-lip gap (13-14) and mean eyelid gap (159-145, 386-374) over the inter-ocular
    distance (33-263), per frame of (F, 478, 2+) landmarks."""
    iod = np.linalg.norm(points[:, 33] - points[:, 263], axis=1)
    lip = np.linalg.norm(points[:, 13] - points[:, 14], axis=1) / iod
    eye = 0.5 * (np.linalg.norm(points[:, 159] - points[:, 145], axis=1)
                 + np.linalg.norm(points[:, 386] - points[:, 374], axis=1)) / iod
    return lip, eye


def target_lip_gap(tracker, face, expression: np.ndarray) -> np.ndarray:
    """The retargeted face's own inner-lip gap per frame (model landmarks 13-14 over 33-263)."""
    import torch

    ident = torch.as_tensor(face.identity)
    with torch.no_grad():
        out = []
        for e in expression:
            v = tracker.layout.points(ident, torch.as_tensor(e)).cpu().numpy()
            out.append(np.linalg.norm(v[13] - v[14]) / np.linalg.norm(v[33] - v[263]))
    return np.array(out)


def rotation_vectors_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (F, 3), degrees, of a_f b_f^T: the rotation that takes b to a in the
    frame both map into (for head poses, the camera's: x right, y down, z forward)."""
    import cv2

    r = np.einsum("fij,fkj->fik", np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.degrees(np.array([cv2.Rodrigues(x)[0].ravel() for x in r]))


def performer_tilt_deg(model, identity) -> np.ndarray:
    """Axis-angle vector, degrees, in the model's axes (x: pitch), of the rotation that best takes
    the average face onto a performer's neutral face (narrow face region, least-squares
    similarity). A face turned this way and a turned head project alike: only the shape's other
    differences from the average tell them apart."""
    from .core.geometry import similarity_transform
    from .core.synthetic import model_vertices

    lo, hi = REGIONS[PRIMARY_REGION]
    zero = np.zeros(len(model.exp_names), np.float32)
    mean = model_vertices(model, np.zeros_like(np.asarray(identity, np.float32)), zero)[lo:hi]
    face = model_vertices(model, np.asarray(identity, np.float32), zero)[lo:hi]
    return rotation_vectors_deg(similarity_transform(mean, face)[1][None], np.eye(3)[None])[0]


def performance_figures(track, truth: dict, model=None) -> dict:
    """A track of a performance against its truth: r per performed curve, rotation error, and
    the error's constant part over the clip (rotation_offset_deg, camera axes; x is pitch) with
    the rest about it. With the model, also the performer's own tilt (performer_tilt_deg)."""
    names = [str(n) for n in track.exp_names]
    r = {c: pearson(track.expression[:, names.index(c)], truth["curves"][c])
         for c in PERFORMANCE_CURVES}
    vec = rotation_vectors_deg(track.rotation, truth["rotation"])
    err = np.linalg.norm(vec, axis=1)        # the geodesic angle, as rotation_error_deg
    offset = vec.mean(0)
    out = {"r": r, "rotation_error_deg_mean": float(err.mean()),
           "rotation_error_deg_max": float(err.max()),
           "rotation_offset_deg": offset.tolist(),
           "rotation_error_about_offset_deg_mean": float(np.linalg.norm(vec - offset, axis=1).mean())}
    if model is not None:
        out["performer_tilt_deg"] = performer_tilt_deg(model, truth["identity"]).tolist()
    return out


class _TrueLandmarkDetections:
    """A tracker's `detect` with each found frame's fixed-point landmarks (no face oval, no iris,
    as in the photo diagnostic) moved onto a performance's true surface points (diagnostic);
    `error_px` keeps the detector's own rms error over those points."""

    def __init__(self, detect, model, truth: dict) -> None:
        self.detect, self.model, self.truth = detect, model, truth
        self.error_px = float("nan")

    def __call__(self, path, progress, cancel):
        from types import SimpleNamespace

        det = self.detect(path, progress, cancel)
        t = self.truth
        frames = np.asarray(det.indices)[np.asarray(det.found, bool)]    # source frame numbers
        sq = []
        for k, i in enumerate(frames):
            case = SimpleNamespace(identity=t["identity"], expression=t["expression"][i],
                                   rotation=t["rotation"][i], translation=t["translation"][i], K=t["K"])
            pts = np.array(det.points[k], copy=True)
            ids, true = true_landmarks(self.model, case)
            sq.append(((pts[ids, :2] - true) ** 2).sum(1))
            pts[ids, :2] = true
            det.points[k] = pts
        self.error_px = float(np.sqrt(np.mean(sq)))
        return det


def performance_figures_true_landmarks(tracker, path, face, truth: dict) -> dict:
    """performance_figures of a track made from the true fixed-point landmarks, with the
    detector's error on them."""
    tracker.detect = true = _TrueLandmarkDetections(tracker.detect, tracker.model, truth)
    try:
        figures = performance_figures(tracker.track(path, face), truth, tracker.model)
    finally:
        del tracker.detect      # the class's own method again
    return {**figures, "detector_error_px": true.error_px}


def clip_figures(tracker, face, path) -> dict:
    """A real clip: frames tracked, jawOpen and the retargeted lip gap against the speaker's."""
    import threading

    det = tracker.detect(path, lambda f, m: None, threading.Event())
    track = tracker.track(path, face)
    names = [str(n) for n in track.exp_names]
    # The speaker's gap from the detections (one per found frame), the track's per frame: both
    # sequences are whole when every frame has a face, which the figures report alongside.
    lip, _ = lip_and_eye_gaps(np.stack(det.points))
    found = track.face_found
    jaw = track.expression[found, names.index("jawOpen")]
    # For reading the figure: MediaPipe's own jawOpen score (as the tracker reads it) against the
    # same gap, and both over the frames whose lips are apart (a speaker can shut the lips
    # with the jaw open, where jawOpen is right to stay up and the gap is 0).
    score = np.asarray(det.exp0)[:, names.index("jawOpen")]
    apart = lip >= LIPS_APART

    def r_apart(curve):
        return pearson(curve[apart], lip[apart]) if apart.sum() > 2 else None

    return {"frames": int(track.n_frames), "frames_with_face": int(found.sum()),
            "jaw_open_vs_lip_gap_r": pearson(jaw, lip),
            "mediapipe_jaw_open_vs_lip_gap_r": pearson(score, lip),
            "lips_apart_frames": int(apart.sum()),
            "jaw_open_vs_lip_gap_r_lips_apart": r_apart(jaw),
            "mediapipe_jaw_open_vs_lip_gap_r_lips_apart": r_apart(score),
            "retargeted_lip_gap_r": pearson(target_lip_gap(tracker, face, track.expression[found]), lip),
            "frames_per_second": track.report["frames_per_second"]}


def evaluate_tracking(seeds=PERFORMANCE_SEEDS, clips=GRID_CLIPS, device: str = "auto",
                      landmarks: str = "detected") -> dict:
    """The tracker's figures: synthetic performances (one identity per seed) and GRID clips.
    landmarks "true": the performances tracked from their true fixed-point landmarks."""
    if landmarks not in ("detected", "true"):
        raise ValueError(f"unknown landmarks {landmarks!r}")
    if landmarks == "true" and clips:
        raise ValueError("true landmarks exist for the synthetic performances only")
    import tempfile

    from .core.performance import write_performance
    from .core.synthetic import astronaut_skin_texture
    from .core.tracking import Tracker, TrackSettings

    rec = make_reconstructor("fast", device)
    try:
        target = rec.run(np.ascontiguousarray(_astronaut()))
        tracker = Tracker(rec, TrackSettings(device=device))
        skin = astronaut_skin_texture()
        synthetic = {}
        with tempfile.TemporaryDirectory(prefix="hiface_eval_") as tmp:
            for seed in seeds:
                path = Path(tmp) / f"performance_{seed}.mp4"
                truth = write_performance(path, rec.model, skin, seed=seed)
                if landmarks == "true":
                    synthetic[str(seed)] = performance_figures_true_landmarks(tracker, path, target, truth)
                else:
                    track = tracker.track(path, target)
                    synthetic[str(seed)] = performance_figures(track, truth, rec.model)
                path.unlink()
        real = {}
        for clip in clips:
            real[clip] = clip_figures(tracker, target, grid_clip(clip))
    finally:
        rec.close()
    summary: dict = {"seeds": list(seeds), "clips": list(clips), "device": str(rec.device),
                     "landmarks": landmarks,
                     "targets": {k: TARGETS[k] for k in ("curve_r", "rotation_deg", "jaw_lip_r")}}
    if synthetic:
        rows = list(synthetic.values())
        summary["curve_r_min"] = {c: min(x["r"][c] for x in rows) for c in PERFORMANCE_CURVES}
        summary["curve_r_mean"] = {c: float(np.mean([x["r"][c] for x in rows])) for c in PERFORMANCE_CURVES}
        summary["rotation_error_deg_mean"] = float(np.mean([x["rotation_error_deg_mean"] for x in rows]))
        summary["rotation_error_deg_worst_seed"] = max(x["rotation_error_deg_mean"] for x in rows)
        if len(rows) >= 3 and all("performer_tilt_deg" in x for x in rows):
            tilt = np.array([x["performer_tilt_deg"][0] for x in rows])
            pitch = np.array([x["rotation_offset_deg"][0] for x in rows])
            summary["pitch_offset_vs_performer_tilt"] = {
                "r": pearson(tilt, pitch), "slope": float(np.polyfit(tilt, pitch, 1)[0])}
    if real:
        summary["jaw_open_vs_lip_gap_r_min"] = min(x["jaw_open_vs_lip_gap_r"] for x in real.values())
        summary["every_frame_tracked"] = all(x["frames_with_face"] == x["frames"] for x in real.values())
    summary["pass"] = bool(
        (not synthetic or (min(summary["curve_r_min"].values()) >= TARGETS["curve_r"]
                           and summary["rotation_error_deg_worst_seed"] <= TARGETS["rotation_deg"]))
        and (not real or (summary["jaw_open_vs_lip_gap_r_min"] >= TARGETS["jaw_lip_r"]
                          and summary["every_frame_tracked"])))
    return {"summary": summary, "synthetic": synthetic, "real": real}


GAZE_SEED = 500
GAZE_PERFORMANCE_SEEDS = (7, 11)


def gaze_figures(true_expression: np.ndarray, fitted_expression: np.ndarray, names) -> dict:
    """Eye angles (core.gaze) fitted against true, over rows of weights: per direction (sideways
    towards the face's left, up) Pearson r and slope over both eyes, and the mean error in
    degrees."""
    from .core.gaze import eye_angles

    names = [str(x) for x in names]
    t = np.degrees([eye_angles(e, names) for e in true_expression])
    f = np.degrees([eye_angles(e, names) for e in fitted_expression])
    out = {}
    for j, d in enumerate(("sideways", "vertical")):
        a, b = t[..., j].ravel(), f[..., j].ravel()
        out[d] = {"r": pearson(b, a) if a.std() > 0 else None,
                  "slope": float(np.polyfit(a, b, 1)[0]) if a.std() > 0 else None,
                  "error_deg_mean": float(np.abs(a - b).mean())}
    return out


def evaluate_gaze(n: int = 16, seed: int = GAZE_SEED, seeds=GAZE_PERFORMANCE_SEEDS,
                  device: str = "auto") -> dict:
    """Where the fitted eyes look: synthetic photos with random gaze (core.synthetic
    with_random_gaze) and the same photos looking ahead (the gaze a fit invents), and
    performances with eye movements (core.performance gaze_curves), tracked. No acceptance
    figure: reported for the README."""
    import tempfile

    from .core.performance import write_performance
    from .core.synthetic import astronaut_skin_texture, render_case, with_random_gaze
    from .core.tracking import Tracker, TrackSettings

    rec = make_reconstructor("standard", device)
    try:
        model, names = rec.model, rec.model.exp_names
        skin = astronaut_skin_texture(rec)
        rows = {"looking": ([], []), "ahead": ([], [])}
        for i, case in synthetic_cases(model, n, seed):
            looking = with_random_gaze(np.random.default_rng([seed, i]), model, case)
            for key, c in (("looking", looking), ("ahead", case)):
                res = rec.run(render_case(model, c, skin))
                rows[key][0].append(c.expression)
                rows[key][1].append(res.expression)
        photos = {k: gaze_figures(np.array(t), np.array(f), names) for k, (t, f) in rows.items() if t}
        target = rec.run(np.ascontiguousarray(_astronaut()))
        tracker = Tracker(rec, TrackSettings(device=device))
        performances = {}
        with tempfile.TemporaryDirectory(prefix="hiface_eval_") as tmp:
            for s in seeds:
                path = Path(tmp) / f"performance_gaze_{s}.mp4"
                truth = write_performance(path, model, skin, seed=s, gaze=True)
                track = tracker.track(path, target)
                performances[str(s)] = {"gaze": gaze_figures(truth["expression"], track.expression, names),
                                        **performance_figures(track, truth)}
                path.unlink()
    finally:
        rec.close()
    summary = {"n": n, "seed": seed, "seeds": list(seeds), "device": str(rec.device),
               "photos": photos, "performances": {k: v["gaze"] for k, v in performances.items()}}
    return {"summary": summary, "performances": performances}


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def _names(text: str) -> tuple:
    return tuple(x for x in text.split(",") if x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hiface_blender.evaluate", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="renders with known truth: shape and expression error")
    s.add_argument("--n", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--save", metavar="DIR", help="also write the renders as PNGs into DIR")
    s.add_argument("--landmarks", choices=("detected", "true", "oval"), default="detected",
                   help="true: fit to the true fixed-point landmarks (diagnostic of the fitter "
                        "alone); oval: the face oval moved onto the true contour (diagnostic)")
    r = sub.add_parser("real", help="real photos: landmark reprojection error")
    for p in (s, r):
        p.add_argument("--quality", default="standard")
    t = sub.add_parser("tracking", help="video tracking: performances with known truth, GRID clips")
    t.add_argument("--seeds", type=_names, default=tuple(map(str, PERFORMANCE_SEEDS)),
                   help="performers' identities, comma-separated (default "
                        f"{','.join(map(str, PERFORMANCE_SEEDS))}; empty: none)")
    t.add_argument("--clips", type=_names, default=None,
                   help="GRID clips, comma-separated (all five; empty: none; none with "
                        "--landmarks true)")
    t.add_argument("--landmarks", choices=("detected", "true"), default="detected",
                   help="true: track the performances from their true fixed-point landmarks "
                        "(diagnostic of the fitter alone; no GRID clips)")
    g = sub.add_parser("gaze", help="where the fitted eyes look: photos and performances with known gaze")
    g.add_argument("--n", type=int, default=16)
    g.add_argument("--seed", type=int, default=GAZE_SEED)
    g.add_argument("--seeds", type=_names, default=tuple(map(str, GAZE_PERFORMANCE_SEEDS)),
                   help="performers' identities, comma-separated (empty: none)")
    for p in (s, r, t, g):
        p.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.cmd == "synthetic":
        out = evaluate_synthetic(args.n, args.seed, quality=args.quality, device=args.device,
                                 save_dir=args.save, landmarks=args.landmarks)
    elif args.cmd in ("tracking", "gaze"):
        try:
            seeds = tuple(int(x) for x in args.seeds)
        except ValueError:
            ap.error(f"--seeds takes whole numbers, got {','.join(args.seeds)}")
        if args.cmd == "gaze":
            json.dump(evaluate_gaze(args.n, args.seed, seeds, device=args.device), sys.stdout, indent=1)
            sys.stdout.write("\n")
            return 0
        if args.clips is None:
            args.clips = () if args.landmarks == "true" else GRID_CLIPS
        elif args.clips and args.landmarks == "true":
            ap.error("--landmarks true measures the synthetic performances only: a GRID clip has "
                     "no true landmarks")
        unknown = [c for c in args.clips if c not in GRID_CLIPS]
        if unknown:
            ap.error(f"unknown GRID clip {unknown[0]!r} (one of {', '.join(GRID_CLIPS)})")
        if not seeds and not args.clips:
            ap.error("nothing to measure: give at least one seed or one clip")
        try:
            for c in args.clips:
                grid_clip(c)
        except FileNotFoundError as e:
            ap.error(str(e))
        out = evaluate_tracking(seeds, args.clips, device=args.device, landmarks=args.landmarks)
    else:
        out = evaluate_real(quality=args.quality, device=args.device)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    diagnostic = out["summary"].get("landmarks") in ("true", "oval")
    return 0 if out["summary"]["pass"] or diagnostic else 1


if __name__ == "__main__":
    sys.exit(main())
