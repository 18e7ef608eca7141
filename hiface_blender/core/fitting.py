"""Fit the ICT model to 2D landmarks of one photo: identity, expression, head pose, focal length.

Camera: pinhole, principal point at the image centre, focal length estimated under a prior
(focal, depth and face size trade off in one photo). Expressions are bounded to [0, 1] and start
from MediaPipe's blendshape scores. Face-oval landmarks slide along per-point candidate curves to
the model's current occluding contour instead of being tied to fixed vertices.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import Cancelled
from .face_model import FaceModel, SparseFace
from .landmark_noise import ICT_TO_CV_MM, model_frame_offsets

# ICT axes (Y up, +Z forward, cm) to OpenCV model axes (Y down, +Z away from the camera, mm).
ICT_TO_CV = torch.as_tensor(ICT_TO_CV_MM, dtype=torch.float32)
# The fits turn the iris points sideways only. MediaPipe's iris points follow a sideways turn of
# the eyes closely (slope 0.95, r 0.94 on synthetic photos) but an up / down turn at 0.42 of its
# size (r 0.77), and its up / down scores move with the brows: turned vertically in the video
# fit, the irises took a performer's inner brow from r 0.88 to 0.83 (synthetic performance,
# seed 19). Up / down gaze comes from the scores and the lids, as before.
FIT_GAZE_DEGREES = {"up": 0.0, "down": 0.0}
MP_OUTER_EYE = (33, 263)  # inter-ocular distance: outer eye corners (300-W convention)
FA_OUTER_EYE = (36, 45)


@dataclass
class FitSettings:
    iterations: int = 300
    rigid_iterations: int = 60
    focal_prior: float = 1.2          # focal / max(width, height) expected a priori
    focal_sigma: float = 0.35         # prior width in log focal
    # Expected landmark error, fraction of the inter-ocular distance. The detector's error is
    # mostly systematic per face, not pixel noise: a tighter value bends identity and expression
    # to follow it (measured on synthetic renders with known truth).
    landmark_sigma: float = 0.03
    expression_l1: float = 0.5
    expression_init_weight: float = 2.0
    contour_weight: float = 0.5
    # The iris points turn with the gaze (FIT_GAZE_DEGREES). Weighed more, they also follow the
    # detector's iris error (`evaluate gaze`, 16 synthetic photos): at 0.3 / 1 / 3 the sideways
    # gaze is 5.8 / 4.8 / 4.2 degrees off on photos looking sideways, and 2.1 / 2.6 / 3.1
    # degrees off on the same photos looking ahead.
    iris_weight: float = 1.0
    # Fixed-point landmarks weighed by the detector's learned error covariance (landmark_noise.py)
    # where the model data has one, instead of landmark_sigma.
    landmark_noise: bool = True
    noise_weight: float = 1.0


@dataclass
class FitResult:
    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray         # (3,3) OpenCV model axes -> camera
    translation: np.ndarray      # (3,) mm
    intrinsics: np.ndarray       # (3,3)
    landmarks_fitted: np.ndarray  # (N, 2) px
    contour_vertices: np.ndarray  # vertex chosen per oval landmark at the end
    errors: dict = field(default_factory=dict)


@contextlib.contextmanager
def small_tensor_threads(device: torch.device):
    """One intra-op thread on the CPU while optimising small tensors.

    Each step works on a few thousand numbers: extra threads add no speed, and when the cores are
    busy (Blender, a render, other jobs) OpenMP's spinning makes the loop 10-20x slower.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_adam(groups, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused update where torch has one (CPU, CUDA): the fits' tensors are small,
    so one kernel per step instead of several per parameter is most of the saving."""
    return torch.optim.Adam(groups, fused=True if device.type in ("cpu", "cuda") else None)


def rodrigues_batch(w: torch.Tensor) -> torch.Tensor:
    """(B, 3) axis-angle -> (B, 3, 3) rotation matrices."""
    theta = torch.sqrt((w * w).sum(-1, keepdim=True) + 1e-12)
    k = w / theta
    z = torch.zeros_like(k[:, 0])
    kx = torch.stack([z, -k[:, 2], k[:, 1], k[:, 2], z, -k[:, 0], -k[:, 1], k[:, 0], z], -1)
    kx = kx.reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return eye + s * kx + (1 - c) * (kx @ kx)


def rodrigues(w: torch.Tensor) -> torch.Tensor:
    return rodrigues_batch(w[None])[0]


def pick_contour(cand_px: torch.Tensor, target: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Per oval landmark, the candidate nearest to it among those on the visible side of the fold.

    cand_px (B, C, N, 2): projected candidates, ordered inner -> outer along each curve; target
    (B, C, 2): the oval landmarks; centre (B, 1, 2): the face centre in the image. Returns (B, C).
    The curve's projection moves outward until it folds over the occluding contour; points past
    the fold are hidden, so they may not be chosen.
    """
    out = target - centre
    out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    along = (cand_px * out[:, :, None, :]).sum(-1)
    fold = along.argmax(-1)
    idx = torch.arange(cand_px.shape[2], device=cand_px.device)[None, None, :]
    dist = (cand_px - target[:, :, None, :]).norm(dim=-1)
    dist = torch.where(idx <= fold[..., None], dist, torch.full_like(dist, 1e9))
    return dist.argmin(-1)


class LandmarkLayout:
    """Which model points the detector's landmarks are, for one detector kind."""

    def __init__(self, model: FaceModel, kind: str) -> None:
        data = model.data
        dev = model.neutral.device
        self.exp_names = data.exp_names
        if kind == "mediapipe478":
            ids = torch.from_numpy(data.tris[data.mp_tri].astype(np.int64)).to(dev)
            w = torch.from_numpy(data.mp_bary).to(dev)
            self.points = model.sparse(w, ids)
            # Where the detector puts each point relative to the surface (calibrate.py).
            self.points.neutral += torch.from_numpy(data.mp_offset).to(self.points.neutral)
            n = 478
            self.contour_lm = torch.from_numpy(data.contour_mp.astype(np.int64)).to(dev)
            cand = torch.from_numpy(data.contour_candidates.astype(np.int64)).to(dev)
            self.cand_shape = cand.shape
            self.candidates = model.sparse(torch.ones(cand.numel(), 1, device=dev), cand.reshape(-1, 1))
            self.candidate_ids = cand
            self.outer_eye = MP_OUTER_EYE
            self.iris = torch.arange(468, 478, device=dev)
            # The iris points turn with the eyeballs (core.gaze): they measure eyeLook.
            self.gaze = model.gaze_turn([1] * 5 + [0] * 5, FIT_GAZE_DEGREES)   # 468-472: right eye
        elif kind == "fa68":
            ids = torch.from_numpy(data.landmarks68.astype(np.int64)).to(dev)[:, None]
            self.points = model.sparse(torch.ones(68, 1, device=dev), ids)
            n = 68
            self.contour_lm = torch.arange(0, 17, device=dev)
            self.candidates = None
            self.outer_eye = FA_OUTER_EYE
            self.iris = torch.zeros(0, dtype=torch.long, device=dev)
            self.gaze = None
        else:
            raise ValueError(f"unknown landmark kind {kind!r}")
        self.n = n
        self.noise = None
        if kind == "mediapipe478" and data.mp_noise_basis.size:   # empty: not learned
            from .landmark_noise import NoiseEnergy
            self.noise = NoiseEnergy(data.mp_noise_ids, data.mp_noise_basis, data.mp_noise_diag, dev)
        self.fixed = torch.ones(n, dtype=torch.bool, device=dev)
        if self.candidates is not None:
            self.fixed[self.contour_lm] = False

    def posed_points(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """(N, 3) cm, ICT axes: the landmarks' model points, the irises turned by the gaze."""
        pts = self.points(identity, expression)
        if self.gaze is None:
            return pts
        return self.gaze.turn_rows(pts[None], self.iris, identity, expression[None])[0]

    def picked_candidates(self, pick: torch.Tensor):
        """The model restricted to the chosen candidate of each oval landmark, (C,) points: the
        fit evaluates these per step instead of every candidate."""
        flat = torch.arange(self.cand_shape[0], device=pick.device) * self.cand_shape[1] + pick
        c = self.candidates
        return SparseFace(c.neutral[flat], c.id_basis[:, flat], c.exp_basis[:, flat])


def _project(x_cv_mm: torch.Tensor, rot, t, f, c) -> torch.Tensor:
    xc = x_cv_mm @ rot.T + t
    return f * xc[:, :2] / xc[:, 2:3].clamp_min(1.0) + c


def fit_landmarks(model: FaceModel, points2d: np.ndarray, kind: str, exp_init: np.ndarray,
                  image_size: tuple[int, int], settings: FitSettings | None = None,
                  cancel: threading.Event | None = None, progress=None) -> FitResult:
    with small_tensor_threads(model.neutral.device):
        return _fit_landmarks(model, points2d, kind, exp_init, image_size, settings, cancel, progress)


def _fit_landmarks(model, points2d, kind, exp_init, image_size, settings, cancel, progress):
    import cv2

    s = settings or FitSettings()
    dev = model.neutral.device
    dt = torch.float32
    layout = LandmarkLayout(model, kind)
    h, w = image_size
    lm = torch.as_tensor(points2d[:, :2], dtype=dt, device=dev)
    a, b = layout.outer_eye
    iod = float(np.linalg.norm(points2d[a, :2] - points2d[b, :2]))
    sigma = max(s.landmark_sigma * iod, 0.5)
    f0 = s.focal_prior * max(h, w)
    c = torch.tensor([w / 2.0, h / 2.0], dtype=dt, device=dev)
    axes = ICT_TO_CV.to(dev)

    # Rigid start: PnP on the average face with the prior focal length.
    zero_id = torch.zeros(model.n_identity, device=dev)
    exp0 = torch.as_tensor(np.clip(exp_init, 0, 1), dtype=dt, device=dev)
    with torch.no_grad():
        obj = (layout.posed_points(zero_id, exp0) * axes).cpu().numpy().astype(np.float64)
    fixed_np = layout.fixed.cpu().numpy()
    k0 = np.array([[f0, 0, w / 2.0], [0, f0, h / 2.0], [0, 0, 1]])
    ok, rvec, tvec = cv2.solvePnP(obj[fixed_np], points2d[fixed_np, :2].astype(np.float64), k0, None,
                                  flags=cv2.SOLVEPNP_EPNP)
    if not ok or tvec[2, 0] <= 0:
        rvec, tvec = np.zeros((3, 1)), np.array([[0.0], [0.0], [f0 * 140.0 / max(iod, 1.0)]])
    rot0 = torch.as_tensor(cv2.Rodrigues(rvec)[0], dtype=dt, device=dev)

    identity = torch.zeros(model.n_identity, dtype=dt, device=dev, requires_grad=True)
    expression = exp0.clone().requires_grad_(True)
    wvec = torch.zeros(3, dtype=dt, device=dev, requires_grad=True)
    tr = torch.as_tensor(tvec[:, 0], dtype=dt, device=dev).clone().requires_grad_(True)
    logf = torch.tensor(math.log(f0), dtype=dt, device=dev, requires_grad=True)

    weights = torch.ones(layout.n, dtype=dt, device=dev)
    weights[~layout.fixed] = s.contour_weight
    if len(layout.iris):
        weights[layout.iris] = s.iris_weight
    noise = layout.noise if s.landmark_noise else None
    if noise is not None:
        weights[noise.ids] = 0.0
    contour_pick = contour_points = None

    def pose():
        return rodrigues(wvec) @ rot0

    def choose_contour():
        """The candidate picked per oval landmark, and the model restricted to those points."""
        with torch.no_grad():
            rot, f = pose(), logf.exp()
            cp = _project(layout.candidates(identity, expression) * axes, rot, tr, f, c)
            cp = cp.reshape(1, *layout.cand_shape, 2)
            target = lm[layout.contour_lm][None]
            centre = lm[layout.fixed].mean(0)[None, None]
            pick = pick_contour(cp, target, centre)[0]
        return pick, layout.picked_candidates(pick)

    def energy(rigid: bool):
        rot, f = pose(), logf.exp()
        pts = layout.posed_points(identity, expression) * axes
        proj = _project(pts, rot, tr, f, c)
        if layout.candidates is not None:
            chosen = contour_points(identity, expression) * axes
            proj = proj.clone()
            proj[layout.contour_lm] = _project(chosen, rot, tr, f, c)
        r2 = ((proj - lm) ** 2).sum(1) / sigma ** 2
        robust = torch.where(r2 < 9.0, r2, 6.0 * torch.sqrt(r2) - 9.0)
        e = (weights * robust).sum()
        if noise is not None:
            # The pixel -> face-frame conversion is a change of units, held fixed within a step:
            # differentiated, a longer focal length (or a rotation that turns residuals out of
            # the face plane) shrank every residual, and the focal length drifted 27 % long.
            depth = (pts[noise.ids] @ rot.T + tr)[:, 2:3].detach().clamp_min(1.0)
            e = e + s.noise_weight * noise(model_frame_offsets(
                depth, rot.detach(), f.detach(), lm[noise.ids] - proj[noise.ids], axes))
        e = e + ((logf - math.log(f0)) / s.focal_sigma) ** 2
        if not rigid:
            e = e + (identity ** 2).sum()
            e = e + s.expression_l1 * expression.sum()
            e = e + s.expression_init_weight * ((expression - exp0) ** 2).sum()
        return e, proj

    total = s.rigid_iterations + s.iterations
    stages = ((True, s.rigid_iterations, [wvec, tr, logf]),
              (False, s.iterations, [wvec, tr, logf, identity, expression]))
    step = 0
    for rigid, n_iter, params in stages:
        opt = make_adam([{"params": [wvec], "lr": 0.01}, {"params": [tr], "lr": 2.0},
                         {"params": [logf], "lr": 0.01}]
                        + ([] if rigid else [{"params": [identity], "lr": 0.05},
                                              {"params": [expression], "lr": 0.02}]), dev)
        for it in range(n_iter):
            if layout.candidates is not None and (it % 10 == 0 or contour_pick is None):
                contour_pick, contour_points = choose_contour()
            e, _ = energy(rigid)
            opt.zero_grad()
            e.backward()
            opt.step()
            with torch.no_grad():
                expression.clamp_(0.0, 1.0)
            step += 1
            if it % 25 == 0:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                if progress is not None:
                    progress(step / total)

    with torch.no_grad():
        if layout.candidates is not None:
            contour_pick, contour_points = choose_contour()
        _, proj = energy(False)
        err = (proj - lm).norm(dim=1).cpu().numpy()
        f = float(logf.exp())
        rot = pose().cpu().numpy()
        contour_vertices = (layout.candidate_ids[torch.arange(layout.cand_shape[0], device=dev), contour_pick]
                            .cpu().numpy() if layout.candidates is not None else np.zeros(0, np.int64))
    k = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float32)
    errors = {
        "reprojection_px_mean": float(err.mean()),
        "reprojection_px_median": float(np.median(err)),
        "reprojection_px_max": float(err.max()),
        "interocular_px": iod,
        "reprojection_iod_mean": float(err.mean() / iod),
        "n_landmarks": int(len(err)),
        "focal_px": f,
        "focal_prior_px": f0,
    }
    return FitResult(identity=identity.detach().cpu().numpy(), expression=expression.detach().cpu().numpy(),
                     rotation=rot.astype(np.float32), translation=tr.detach().cpu().numpy().astype(np.float32),
                     intrinsics=k, landmarks_fitted=proj.cpu().numpy().astype(np.float32),
                     contour_vertices=contour_vertices, errors=errors)
