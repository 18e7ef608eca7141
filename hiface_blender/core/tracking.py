"""Video -> Track: per-frame expression and head pose, identity held fixed.

Stages: decode (OpenCV) -> detect (MediaPipe Face Landmarker, each frame on its own by default;
two of them side by side, on alternate frames) -> skin flow -> fit -> fill -> smooth.

Detection follows one performer: the face that is largest when first seen, then the one nearest
it in each frame (`follow_face`). A face too small for the whole-frame pass is found by a search
of image tiles and then looked for in a crop around its last place (`VideoLandmarker.detect`).

Threads: `detect` runs its landmarkers in worker threads of its own and joins them before it
returns or raises; everything else runs in the caller's thread.

Fit: for every frame with a face, the 53 expression weights (bounded to [0, 1]) and the head
pose are fitted to the 478 landmarks under a fixed pinhole camera, in batches of frames that are
optimised together in one vectorised loop (on the GPU when there is one). Each frame starts from
MediaPipe's blendshape scores and from a PnP pose seeded by the previous frame; a weak temporal
term ties neighbouring frames, and the first frame of a batch to the last of the batch before.
Face-oval landmarks slide to the model's current occluding contour, as in the photo fit.
Skin points followed by optical flow from a reference frame (surface_flow.py, `flow_points`)
join the landmarks as further fixed points: in the performer's shape, and in the expression fit
above the nose (see TrackSettings).

Identity: by default (`identity="video"`) the performer's own shape is estimated first, jointly
over a spread of frames, because the performer is usually not the person in the photo: holding
the photo's identity would explain their different mouth width or brow height as expression.
`identity="target"` holds the photo's identity instead (same person in photo and video).
The expression weights are then applied to the target face's shape keys.
"""
from __future__ import annotations

import copy
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import Cancelled, HiFaceError
from .fitting import ICT_TO_CV, FitSettings, LandmarkLayout, make_adam, pick_contour, rodrigues_batch
from .landmark_noise import model_frame_offsets
from .landmarks import (MAX_FACES, TILE_RETRY_MIN_SIDE, crop_around, faces_in_result,
                        search_tiles)
from .result import FaceResult, Track
from .video import frame_times

ProgressFn = Callable[[float, str], None]

MP_OUTER_EYE = (33, 263)
MP_SUBNASALE = 2            # below the nose tip: skin points under it are "lower face"
# Confidence falls off with the mean landmark residual as a fraction of the inter-ocular distance.
CONFIDENCE_RESIDUAL_IOD = 0.06
# A face narrower than this share of the frame's long side is followed in a crop around it.
SMALL_FACE = 0.2
# Frames between image-tile searches while no face has been found (a search is 20-40 passes).
TILE_SEARCH_EVERY = 10
DETECT_SHARE = 0.75  # of the progress bar


@dataclass
class TrackSettings:
    device: str = "auto"
    smoothing: float = 0.5           # 0 = raw per-frame fit, 1 = strongest smoothing
    start: int = 0                   # first source frame
    end: int | None = None           # source frame to stop before (None: to the end)
    stride: int = 1                  # every n-th frame
    identity: str = "video"          # "video": estimate the performer; "target": the photo's
    focal: float | None = None       # pixels; None: the photo's focal scaled to the video size
    chunk: int = 128                 # frames fitted together
    iterations: int = 40             # optimiser steps per chunk
    identity_frames: int = 24        # frames the performer's identity is estimated from
    identity_iterations: int = 80    # (then flow_identity_iterations more with the skin flow)
    # The identity is estimated with the eyeballs held still (the iris points tied to the head,
    # no gaze turn); the expression fit then turns them. Turned there too, the gaze and the
    # eyeballs' place in the face trade against each other. Six synthetic performers: head
    # rotation 2.37 -> 2.18 deg mean (worst 3.22 -> 3.10); two with eye movements, sideways gaze
    # 3.2 -> 2.7 deg; twelve more performers 2.69 -> 2.62 deg; GRID within 0.003.
    identity_eyes_still: bool = True
    # Landmarkers run side by side on every n-th frame each (capped at the CPU count). Measured
    # on the GRID clips, 2 cores, in video mode: 0.92-1.04 -> 0.45-0.52 s for 75 frames.
    detect_workers: int = 2
    # "image": each frame detected on its own; "video": MediaPipe follows the face from frame to
    # frame. Measured on the synthetic clips (six identities), video -> image: the points' error
    # that varies over a clip 1.62 -> 1.36 px rms (inner brows 1.82 -> 1.56), and see the README.
    landmarker_mode: str = "image"
    temporal_weight: float = 4.0     # ties expression of neighbouring frames
    # Per-clip landmark offsets, estimated with the identity. Off by default: constant offsets
    # soak up the performer's average expression (a brow held half raised), which the clamp at 0
    # then cuts from the curves. Measured on the synthetic clips (seeds 7, 11, 13, 17): inner
    # brow r 0.84 / 0.86 / 0.79 / 0.87 -> 0.87 / 0.89 / 0.82 / 0.89 and head rotation error
    # 1.71 / 3.16 / 3.19 / 2.41 -> 1.69 / 2.94 / 2.89 / 2.19 deg without them; on the GRID clips
    # jawOpen vs lip gap moves by under 0.01 and the retargeted lip gap by at most -0.013.
    calibrate: bool = False
    offset_sigma_mm: float = 1.5     # prior width of those offsets
    # Landmarks alone leave the expression ambiguous (a blink or a lowered gaze plus a squint,
    # a raised inner or outer brow), and MediaPipe's blendshape scores carry ARKit's meaning:
    # on video the fit leans on them more than the photo fit does. The iris points weigh 8x
    # (and fade as their lid closes, see _iris_openness); they turn sideways with the eyeLook
    # weights (fitting.FIT_GAZE_DEGREES), so they measure the gaze, and held by them, the gaze
    # channels stop soaking up lid and brow motion. Measured on the synthetic clip of
    # tests/core/test_tracking.py and on a second one (seed 11) kept out of the tuning:
    # inner brow r 0.73 / 0.71 -> 0.86 / 0.86 (seed 11: 0.86 / 0.59 -> 0.87 / 0.87), blinks
    # 0.91 / 0.84 -> 0.90 / 0.91 (0.91 / 0.86 -> 0.96 / 0.92).
    fit: FitSettings = field(default_factory=lambda: FitSettings(
        landmark_sigma=0.03, expression_init_weight=15.0, iris_weight=8.0))
    # Channels whose MediaPipe score is trusted beyond the others (a multiplier on the scores
    # prior). jawOpen: the score follows the lip gap of the GRID speakers at r 0.81-0.99, while
    # landmarks alone let the lip shapes take the opening (a speaker's jaw barely drops).
    # Blinks: the score sees a closing lid that the few lid landmarks blur. mouthPucker: the
    # score follows a pucker that the lip landmarks share with the smile and funnel (synthetic
    # clips, seeds 7 / 11 / 13 / 17: r 0.85 / 0.75 / 0.79 / 0.85 -> 0.91 / 0.83 / 0.87 / 0.92).
    score_trust: dict = field(default_factory=lambda: {"jawOpen": 200.0, "eyeBlink_L": 10.0,
                                                       "eyeBlink_R": 10.0, "mouthPucker": 10.0})
    # Pairs of channels whose weights are tied (symmetry_weight on their difference). ARKit has
    # one browInnerUp, and MediaPipe's landmarks barely tell one inner brow from the other:
    # untied, the fit splits the raise unevenly (synthetic clip: r 0.81 / 0.58 -> 0.73 / 0.71
    # tied). Blinks stay untied: a tie strong enough to help them halves a wink and half-closes
    # the other eye; tying the gaze of the two eyes moved blink r from R to L, no net gain.
    symmetry_weight: float = 300.0
    # Fixed points weighed by the detector's learned error covariance, as in the photo fit
    # (landmark_noise.py). With per-frame detection and the landmark offsets of calibrate.py,
    # on the six synthetic performers: lowest inner brow r 0.77 -> 0.79, pucker 0.82 -> 0.90,
    # right blink 0.84 -> 0.89; head rotation error 2.33 -> 2.09 deg mean (see the README).
    landmark_noise: bool = True
    noise_weight: float = 1.0
    tied: tuple = (("browInnerUp_L", "browInnerUp_R"),)
    # Skin points followed by optical flow (surface_flow.py): at most flow_points (0: off),
    # picked in a reference frame, each kept where its patch (flow_win px square) still matches
    # (normalised correlation over flow_min_score). The performer's identity is refined with
    # them (flow_identity_iterations more steps, each point weighed flow_identity_weight times a
    # landmark: tracked skin pins the shape better than the detector's points). In the
    # expression fit a point weighs flow_weight times a landmark above the nose and
    # flow_lower_weight below it, where the lips' landmarks and MediaPipe's jawOpen score
    # already carry the motion (with the lower points weighed as the upper, jawOpen vs lip gap
    # on GRID's brbk7n fell 0.906 -> 0.900). Measured on the six synthetic performers against
    # the flow off (see the README): lowest inner brow r 0.78 -> 0.88, worst head rotation 3.34
    # -> 2.99 deg; GRID jawOpen vs lip gap within 0.005 of it.
    flow_points: int = 80
    flow_weight: float = 2.0
    flow_lower_weight: float = 0.0
    flow_identity_weight: float = 20.0
    flow_identity_iterations: int = 120
    flow_min_score: float = 0.8
    flow_win: int = 9
    # The flow keeps every frame of the clip in grey (at most FLOW_MAX_SIDE): past this many
    # bytes (about 9,000 frames of a 1080p clip) the clip is tracked from its landmarks alone.
    flow_max_bytes: int = 2 << 30
    data_dir: str | None = None


# --- detection --------------------------------------------------------------------------------


class VideoLandmarker:
    """MediaPipe Face Landmarker for the frames of one clip: make one per video, close it after.

    mode "image": every frame on its own (the face detector runs each time). "video": the
    landmarker follows the face from its previous frame (timestamps must increase, and its
    state belongs to that clip); it is a little faster, but its points' error varies more
    within a clip (TrackSettings.landmarker_mode)."""

    def __init__(self, task_path, mode: str = "image") -> None:
        if mode not in ("image", "video"):
            raise HiFaceError(f"unknown landmarker mode {mode!r} (image, video)")
        os.environ.setdefault("GLOG_minloglevel", "2")
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise HiFaceError(f"MediaPipe is not installed ({e})") from None
        if task_path is None or not Path(task_path).is_file():
            raise HiFaceError(f"MediaPipe face landmarker not found at {task_path}; "
                              "run `python3 build.py setup`")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=Path(task_path).read_bytes()),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_faces=MAX_FACES, output_face_blendshapes=True)
        try:
            self._lm = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as e:
            raise HiFaceError(f"Cannot load the face landmarker: {e}") from None
        self._mp = mp
        self._video = mode == "video"
        self._last_ms = -1

    def detect(self, rgb: np.ndarray, time_ms: int, near: np.ndarray | None = None,
               search: bool = False) -> tuple[list, str]:
        """Every face seen, as (points (478, 2) px, scores (52,), names (52,)), and where it was
        found: "frame", "crop" or "tiles" ("none" with an empty list). Which one is the performer
        is decided in frame order (`follow_face`).

        The whole-frame pass misses faces under about a tenth of the frame's width (its
        detector sees the frame at 128 px). In image mode a small face is therefore looked for
        in a crop around `near` (a recent frame's face) first, and with `search` in image tiles
        when neither that nor the whole frame shows one."""
        h, w = rgb.shape[:2]
        if self._video:
            ts = max(int(time_ms), self._last_ms + 1)
            self._last_ms = ts
            image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            faces = self._faces(self._lm.detect_for_video(image, ts), w, h, 0, 0)
            return faces, "frame" if faces else "none"
        if near is not None and _face_width(near) < SMALL_FACE * max(h, w):
            x0, y0, x1, y1 = crop_around(near, (h, w), 3.0)
            faces = self._run(rgb[y0:y1, x0:x1], x0, y0)
            if faces:
                return faces, "crop"
        faces = self._run(rgb, 0, 0)
        if faces:
            return faces, "frame"
        if search and min(h, w) >= TILE_RETRY_MIN_SIDE:
            faces = search_tiles(self._run, rgb)
            if faces:
                return faces, "tiles"
        return [], "none"

    def _run(self, crop: np.ndarray, ox: int, oy: int) -> list:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(crop))
        return self._faces(self._lm.detect(image), crop.shape[1], crop.shape[0], ox, oy)

    @staticmethod
    def _faces(res, w: int, h: int, ox: int, oy: int) -> list:
        return [(f[0][:, :2].copy(), f[1], f[2]) for f in faces_in_result(res, w, h, ox, oy)]

    def close(self) -> None:
        if self._lm is not None:
            self._lm.close()
            self._lm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _face_width(points: np.ndarray) -> float:
    return float(np.ptp(points[:, 0]))


def follow_face(faces: list, last: np.ndarray | None):
    """The performer among a frame's faces: the largest while none has been followed yet, then
    the one nearest the last followed face (a second person in the clip is not switched to).
    A lone face is taken wherever it is: the performer may have moved during frames without a
    face. None when `faces` is empty."""
    if not faces:
        return None
    if last is None:
        return max(faces, key=lambda f: _face_width(f[0]))
    if len(faces) == 1:
        return faces[0]
    centre = last.mean(0)
    return min(faces, key=lambda f: float(np.linalg.norm(f[0].mean(0) - centre)))


# --- batched fit ------------------------------------------------------------------------------


class _Points:
    """The landmark points and contour candidates of the model as (B, ...) functions of
    expression, for a given identity (a fixed vector or a shared tensor being fitted)."""

    def __init__(self, layout: LandmarkLayout) -> None:
        self.layout = layout
        dev = layout.points.neutral.device
        fixed = torch.nonzero(layout.fixed).squeeze(1)
        # The points the detector's error model covers come first, in its order: the fit then
        # takes their rows as one slice (indexing them every step cost more than the model).
        self.n_noise = 0
        if layout.noise is not None:
            ids = layout.noise.ids.to(fixed.device)
            rest = fixed[~torch.isin(fixed, ids)]
            if len(ids) + len(rest) != len(fixed):
                raise ValueError("the error model covers points outside the fixed landmarks")
            fixed, self.n_noise = torch.cat([ids, rest]), len(ids)
        self.fixed_idx = fixed
        self.n_detector = getattr(layout, "n_detector", layout.n)
        self.contour_lm = layout.contour_lm
        pts = layout.points
        self.p_neutral, self.p_id = pts.neutral, pts.id_basis
        self.p_exp = pts.exp_basis.reshape(pts.exp_basis.shape[0], -1)   # (K, P*3): one matmul
        # The fixed points' rows alone, so the fit's steps neither index nor scatter back.
        fi = self.fixed_idx
        self.f_neutral, self.f_id = pts.neutral[fi], pts.id_basis[:, fi]
        self.f_exp = pts.exp_basis[:, fi].reshape(pts.exp_basis.shape[0], -1)
        cand = layout.candidates
        c, n = layout.cand_shape
        self.cand_shape = (c, n)
        self.c_neutral = cand.neutral.reshape(c, n, 3)
        self.c_id = cand.id_basis.reshape(-1, c, n, 3)
        self.c_exp = cand.exp_basis.reshape(-1, c, n, 3)
        self.axes = ICT_TO_CV.to(dev)
        self.weights = torch.ones(layout.n, device=dev)
        # The iris points' rows, which turn with the eyeballs (layout.gaze), in both orders.
        self.gaze, self.iris, self.f_iris = layout.gaze, None, None
        if self.gaze is not None:
            where = {int(v): i for i, v in enumerate(fi.tolist())}
            self.iris = layout.iris
            self.f_iris = torch.tensor([where[int(i)] for i in layout.iris.tolist()], device=dev)

    def base(self, identity: torch.Tensor):
        return self.point_base(identity), self.candidate_base(identity)

    def point_base(self, identity: torch.Tensor):
        return self.p_neutral + torch.einsum("k,kpc->pc", identity, self.p_id)

    def candidate_base(self, identity: torch.Tensor):
        return self.c_neutral + torch.einsum("k,kcnd->cnd", identity, self.c_id)

    def eyes_still(self) -> "_Points":
        """The same points with the iris rows tied to the head (no gaze turn)."""
        out = copy.copy(self)
        out.gaze = None
        return out

    def _turn_eyes(self, x, rows, identity, exp):
        return x if self.gaze is None else self.gaze.turn_rows(x, rows, identity, exp)

    def landmarks(self, base_p, exp, identity):
        """(B, 478, 3) OpenCV-axes mm."""
        x = base_p + (exp @ self.p_exp).reshape(exp.shape[0], -1, 3)
        return self._turn_eyes(x, self.iris, identity, exp) * self.axes

    def fixed_base(self, identity: torch.Tensor):
        return self.f_neutral + torch.einsum("k,kpc->pc", identity, self.f_id)

    def fixed_landmarks(self, base_f, exp, identity):
        """(B, F, 3) OpenCV-axes mm: the non-contour landmarks, in fixed_idx order."""
        x = base_f + (exp @ self.f_exp).reshape(exp.shape[0], -1, 3)
        return self._turn_eyes(x, self.f_iris, identity, exp) * self.axes

    def gather_contour(self, pick, base_c, with_identity: bool):
        """The picked candidates' rows, gathered once per pick (not per step): their expression
        basis, and their identity basis when the identity is fitted, else their fixed base."""
        ci = torch.arange(self.cand_shape[0], device=pick.device)[None, :]
        e = self.c_exp[:, ci, pick].permute(1, 0, 2, 3)        # (B, K, C, 3)
        e = e.reshape(e.shape[0], e.shape[1], -1)
        if with_identity:
            i = self.c_id[:, ci, pick].permute(1, 2, 3, 0)     # (B, C, 3, Kid)
            return self.c_neutral[ci, pick], i, e
        return base_c.detach()[ci, pick], None, e

    def chosen_contour(self, identity, exp, gathered):
        """(B, C, 3) OpenCV-axes mm: the candidate picked per frame and oval landmark."""
        b, i, e = gathered
        if i is not None:
            b = b + i @ identity
        d = torch.bmm(exp[:, None, :], e)
        return (b + d.reshape(b.shape)) * self.axes

    def all_candidates(self, base_c, exp):
        """(B, C, N, 3) OpenCV-axes mm."""
        k = self.c_exp.shape[0]
        d = (exp @ self.c_exp.reshape(k, -1)).reshape(exp.shape[0], *self.c_exp.shape[1:])
        return (base_c + d) * self.axes


def _project(x, rot, t, f, c, with_depth: bool = False):
    """x (B, ..., 3) model mm -> pixels, rot (B, 3, 3), t (B, 3); with_depth: also the camera
    depths (B, ..., 1) mm, clamped as the projection clamps them."""
    shape = x.shape
    xc = torch.baddbmm(t[:, None, :], x.reshape(shape[0], -1, 3), rot.transpose(1, 2))
    z = xc[..., 2:3].clamp_min(1.0)
    uv = (f * xc[..., :2] / z + c).reshape(*shape[:-1], 2)
    return (uv, z.reshape(*shape[:-1], 1)) if with_depth else uv


def _choose_contour(pts: _Points, base_c, exp, rot, t, f, c, lm):
    """Per frame and oval landmark, the contour candidate (as in the photo fit)."""
    with torch.no_grad():
        cp = _project(pts.all_candidates(base_c, exp), rot, t, f, c)   # (B, C, N, 2)
        return pick_contour(cp, lm[:, pts.contour_lm], lm[:, pts.fixed_idx].mean(1, keepdim=True))


@dataclass
class _Batch:
    lm: torch.Tensor          # (B, 478, 2)
    sigma: torch.Tensor       # (B,) px
    exp0: torch.Tensor        # (B, K)
    rot0: torch.Tensor        # (B, 3, 3)
    t0: torch.Tensor          # (B, 3)
    gap: torch.Tensor         # (B-1,) frames between neighbours (temporal weight divides by it)
    openness: torch.Tensor    # (B, 478) landmark weight factor: iris points x eye openness


def _fit_batch(pts: _Points, batch: _Batch, f: float, c: torch.Tensor, s: TrackSettings,
               identity: torch.Tensor, offsets: torch.Tensor, iterations: int,
               calibrate: bool = False, fit_identity: bool = False,
               prev: tuple | None = None, cancel: threading.Event | None = None,
               exp_init: torch.Tensor | None = None):
    """One Adam loop over all frames of the batch. Returns exp, rot, t, residual (B,) px,
    the identity (fitted when fit_identity) and the landmark offsets (fitted when calibrate).
    The expression starts from exp_init when given, else from the scores (batch.exp0)."""
    fs = s.fit
    dev = batch.lm.device
    nb = batch.lm.shape[0]
    if fit_identity and s.identity_eyes_still:
        pts = pts.eyes_still()
    exp = (batch.exp0 if exp_init is None else exp_init).clone().requires_grad_(True)
    names = list(pts.layout.exp_names)
    trust = torch.ones(len(names), device=dev)
    for name, k in s.score_trust.items():
        if name in names:
            trust[names.index(name)] = k
    tied = [(a, b) for a, b in s.tied if a in names and b in names]
    tie = torch.zeros(len(names), len(tied), device=dev)    # exp @ tie: left minus right
    for j, (a, b) in enumerate(tied):
        tie[names.index(a), j], tie[names.index(b), j] = 1.0, -1.0
    w = torch.zeros(nb, 3, device=dev, requires_grad=True)
    t = batch.t0.clone().requires_grad_(True)
    ident = identity.clone().requires_grad_(fit_identity)
    off = offsets.clone().requires_grad_(calibrate)
    groups = [{"params": [w], "lr": 0.01}, {"params": [t], "lr": 2.0}, {"params": [exp], "lr": 0.03}]
    if fit_identity:
        groups.append({"params": [ident], "lr": 0.05})
    if calibrate:
        groups.append({"params": [off], "lr": 0.1})
    opt = make_adam(groups, dev)
    weights = pts.weights.clone()
    weights[pts.contour_lm] = fs.contour_weight
    weights[pts.layout.iris] = fs.iris_weight
    # The fixed points then the oval's chosen candidates, projected and weighed as one set.
    w_all = torch.cat([weights[pts.fixed_idx][None, :] * batch.openness[:, pts.fixed_idx],
                       weights[pts.contour_lm][None, :].expand(nb, -1)], 1)
    lm_target = torch.cat([batch.lm[:, pts.fixed_idx], batch.lm[:, pts.contour_lm]], 1)
    noise = pts.layout.noise if s.landmark_noise else None
    # The first k rows (those the learned error model covers) are weighed by it instead.
    k = pts.n_noise if noise is not None else 0
    w_all, lm_noise, lm_target = w_all[:, k:], lm_target[:, :k], lm_target[:, k:]
    inv_s2 = 1.0 / batch.sigma[:, None] ** 2
    tw = s.temporal_weight / batch.gap.clamp_min(1.0)
    pick = None
    base_f, off_f = pts.fixed_base(ident), off[pts.fixed_idx]
    base_c = pts.candidate_base(ident) if not fit_identity else None

    def robust(r2):
        return torch.where(r2 < 9.0, r2, 6.0 * torch.sqrt(r2.clamp_min(1e-12)) - 9.0)

    for it in range(iterations):
        if fit_identity:
            base_f = pts.fixed_base(ident)
        if calibrate:
            off_f = off[pts.fixed_idx]
        rot = rodrigues_batch(w) @ batch.rot0
        if it % 10 == 0:
            if fit_identity:
                with torch.no_grad():
                    base_c = pts.candidate_base(ident)
            pick = pts.gather_contour(_choose_contour(pts, base_c, exp.detach(), rot.detach(),
                                                      t.detach(), f, c, batch.lm),
                                      base_c, fit_identity)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
        x = torch.cat([pts.fixed_landmarks(base_f, exp, ident) + off_f,
                       pts.chosen_contour(ident, exp, pick)], 1)
        proj, depth = _project(x, rot, t, f, c, with_depth=True)
        r2 = ((proj[:, k:] - lm_target) ** 2).sum(-1) * inv_s2
        e = (w_all * robust(r2)).sum()
        if noise is not None:
            # As in the photo fit: pixels -> the face's frame at each point's depth, held fixed
            # within a step.
            r_face = model_frame_offsets(depth[:, :k].detach(), rot.detach(), f,
                                         lm_noise - proj[:, :k], pts.axes)
            e = e + s.noise_weight * noise.batch(r_face)
        e = e + fs.expression_l1 * exp.sum()
        e = e + fs.expression_init_weight * (trust * (exp - batch.exp0) ** 2).sum()
        if s.symmetry_weight > 0:
            e = e + s.symmetry_weight * ((exp @ tie) ** 2).sum()
        if nb > 1:
            e = e + (tw[:, None] * (exp[1:] - exp[:-1]) ** 2).sum()
        if prev is not None:
            e = e + s.temporal_weight * ((exp[0] - prev[0]) ** 2).sum()
        if fit_identity:
            e = e + (ident ** 2).sum()
        if calibrate:
            e = e + ((off / s.offset_sigma_mm) ** 2).sum()
        opt.zero_grad(set_to_none=True)
        e.backward()
        opt.step()
        with torch.no_grad():
            exp.clamp_(0.0, 1.0)

    with torch.no_grad():
        base_p, base_c = pts.base(ident)
        rot = rodrigues_batch(w) @ batch.rot0
        pick = pts.gather_contour(_choose_contour(pts, base_c, exp, rot, t, f, c, batch.lm),
                                  base_c, False)
        proj = _project(pts.landmarks(base_p, exp, ident) + off, rot, t, f, c)
        proj[:, pts.contour_lm] = _project(pts.chosen_contour(ident, exp, pick), rot, t, f, c)
        # The detector's landmarks only (not the skin flow's points).
        nd = pts.n_detector
        resid = (proj[:, :nd] - batch.lm[:, :nd]).norm(dim=-1).mean(-1)
    return exp.detach(), rot.detach(), t.detach(), resid, ident.detach(), off.detach()


def _with_surface_points(layout: LandmarkLayout, face, tri_vertices, bary) -> LandmarkLayout:
    """A copy of `layout` with surface points appended after its landmarks (fixed, no offset)."""
    import copy

    from .face_model import SparseFace

    dev = layout.points.neutral.device
    extra = face.sparse(torch.as_tensor(bary, device=dev),
                        torch.as_tensor(np.asarray(tri_vertices, np.int64), device=dev))
    p = layout.points
    out = copy.copy(layout)
    out.points = SparseFace(torch.cat([p.neutral, extra.neutral]),
                            torch.cat([p.id_basis, extra.id_basis], 1),
                            torch.cat([p.exp_basis, extra.exp_basis], 1))
    out.n = layout.n + len(bary)
    out.n_detector = layout.n
    out.fixed = torch.cat([layout.fixed, torch.ones(len(bary), dtype=torch.bool, device=dev)])
    return out


def _pnp_poses(obj_pts: np.ndarray, lm: np.ndarray, fixed: np.ndarray, K: np.ndarray,
               start: tuple | None):
    """Per frame PnP on the non-contour landmarks, each seeded by the frame before."""
    import cv2

    rots, ts = [], []
    guess = start
    for i in range(len(lm)):
        o = obj_pts[i][fixed].astype(np.float64)
        p = lm[i][fixed].astype(np.float64)
        if guess is None:
            ok, rvec, tvec = cv2.solvePnP(o, p, K, None, flags=cv2.SOLVEPNP_EPNP)
        else:
            rvec, tvec = guess[0].copy(), guess[1].copy()
            ok, rvec, tvec = cv2.solvePnP(o, p, K, None, rvec, tvec, useExtrinsicGuess=True,
                                          flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or tvec[2, 0] <= 0:
            iod = float(np.linalg.norm(lm[i][MP_OUTER_EYE[0]] - lm[i][MP_OUTER_EYE[1]]))
            rvec = np.zeros((3, 1))
            tvec = np.array([[0.0], [0.0], [K[0, 0] * 95.0 / max(iod, 1.0)]])
        guess = (rvec, tvec)
        rots.append(cv2.Rodrigues(rvec)[0])
        ts.append(tvec[:, 0])
    return np.array(rots, np.float32), np.array(ts, np.float32), guess


class _single_thread_on_cpu:
    """The fit's tensors are small (a batch of 64 frames x 478 points): on the CPU, syncing
    torch's intra-op threads costs more than it saves, and on a busy machine far more (measured
    on 2 shared cores: 0.45 ms vs 2-20 ms for the same batched product). The setting is
    process-wide, so it is restored afterwards."""

    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cpu"
        self.saved = 0

    def __enter__(self):
        if self.active:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.active:
            torch.set_num_threads(self.saved)


class _Worker(ThreadPoolExecutor):
    """One thread that runs its landmarker's frames in order; leaving drops what has not started."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def __exit__(self, *exc):
        self.shutdown(wait=True, cancel_futures=True)
        return False


# --- the tracker ------------------------------------------------------------------------------


@dataclass
class _Detections:
    indices: list = field(default_factory=list)      # source frame index per decoded frame
    found: list = field(default_factory=list)        # bool per decoded frame
    points: list = field(default_factory=list)       # (478, 2) per found frame
    exp0: list = field(default_factory=list)         # (53,) per found frame
    grays: list = field(default_factory=list)        # uint8 (H, W) per found frame, for the flow
    grays_dropped: bool = False        # the clip outgrew TrackSettings.flow_max_bytes
    image_size: tuple = (0, 0)         # upright, after the container's rotation
    most_faces: int = 0                # the most faces seen in one frame
    found_in: dict = field(default_factory=dict)   # frames per "frame", "crop", "tiles", "none"
    times: list = field(default_factory=list)      # the container's time per decoded frame, s
    rotation: int = 0
    fps: float = 25.0
    # Wall time: decode in the reader; detect waiting for the landmarkers beyond that (they
    # work while the next frames decode), so the two add up to the stage's duration.
    seconds: dict = field(default_factory=lambda: {"decode": 0.0, "detect": 0.0})


FLOW_MAX_SIDE = 640   # the skin flow works on frames no larger (memory: a whole clip is
                      # kept, up to TrackSettings.flow_max_bytes)


def _flow_gray(rgb: np.ndarray) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = FLOW_MAX_SIDE / max(h, w)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return gray


class Tracker:
    """Loads the face model and landmarker once; `track` may be called for many videos.

    `models`: a Reconstructor to share its face model and device with, or None to load them.
    """

    def __init__(self, models=None, settings: TrackSettings | None = None) -> None:
        from .. import paths
        from .face_model import FaceModel, choose_device
        from .model_data import FaceModelData

        self.settings = settings or TrackSettings()
        if models is not None:
            self.model = models.model
            self.face = models.face
            self.device = models.device
            data_dir = paths.data_dir(getattr(models.settings, "data_dir", None) or self.settings.data_dir)
        else:
            self.device = choose_device(self.settings.device)
            data_dir = paths.data_dir(self.settings.data_dir)
            self.model = FaceModelData.load(data_dir / paths.FACE_MODEL)
            self.face = FaceModel(self.model).to(self.device)
        self.task_path = data_dir / paths.LANDMARKER
        self.layout = LandmarkLayout(self.face, "mediapipe478")
        self.points = _Points(self.layout)
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    # -- stages --------------------------------------------------------------------------------

    def detect(self, path, progress: ProgressFn, cancel: threading.Event) -> _Detections:
        """Decode in this thread; detect with `detect_workers` landmarkers, each in a thread of
        its own and fed every n-th frame (the landmarker releases the GIL, and each keeps
        following the face across a gap of only n frames). Results are taken in frame order,
        with a few frames in flight; of the decoded frames only the skin flow's grey copies are
        kept, within `flow_max_bytes`, so memory stays bounded on long videos."""
        from collections import deque

        from .landmarks import scores_to_ict
        from .video import VideoReader, empty_message

        s = self.settings
        det = _Detections()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n_workers = max(1, min(int(s.detect_workers), cores or 1))
        pending: deque = deque()
        grays: deque = deque()
        keep_gray = s.flow_points > 0

        def collect() -> None:
            idx, when, future = pending.popleft()
            t = time.perf_counter()
            faces, where = future.result()
            det.seconds["detect"] += time.perf_counter() - t
            found = follow_face(faces, det.points[-1] if det.points else None)
            det.most_faces = max(det.most_faces, len(faces))
            det.found_in[where] = det.found_in.get(where, 0) + 1
            det.indices.append(idx)
            det.times.append(when)
            det.found.append(found is not None)
            gray = grays.popleft() if grays else None
            if found is not None and gray is not None and not det.grays_dropped:
                det.grays.append(gray)
                if len(det.grays) * gray.nbytes > s.flow_max_bytes:
                    det.grays.clear()
                    det.grays_dropped = True
            if found is not None:
                det.points.append(found[0])
                det.exp0.append(scores_to_ict(found[1], found[2], self.model.exp_names))
            n = len(det.indices)
            progress(DETECT_SHARE * min(n / expected, 1.0), f"Finding the face: frame {n}")

        with VideoReader(path, s.start, s.end, s.stride) as reader, ExitStack() as stack:
            info = reader.info
            det.fps, det.image_size, det.rotation = info.fps, info.size, info.rotation
            expected = max(reader.expected_frames, 1)
            landmarkers = [stack.enter_context(VideoLandmarker(self.task_path, s.landmarker_mode))
                           for _ in range(n_workers)]
            # Entered last, so left first: no landmarker closes under a running detection.
            pools = [stack.enter_context(_Worker()) for _ in range(n_workers)]
            it = iter(reader)
            k = 0
            while True:
                t = time.perf_counter()
                try:
                    idx, rgb = next(it)
                except StopIteration:
                    break
                det.seconds["decode"] += time.perf_counter() - t
                if cancel.is_set():
                    raise Cancelled()
                w = k % n_workers
                if keep_gray and not det.grays_dropped:
                    grays.append(_flow_gray(rgb))
                # The latest face collected is a few frames old (frames in flight): the crop
                # around it leaves a face's width of margin on each side.
                near = det.points[-1] if det.points else None
                search = k % TILE_SEARCH_EVERY == 0 and not (det.found and det.found[-1])
                when = reader.last_time_s
                ms = round(1000.0 * (idx / info.fps if when is None else when))
                pending.append((idx, when, pools[w].submit(landmarkers[w].detect, rgb, ms, near,
                                                           search)))
                k += 1
                # Until a face is found each frame waits for the one before: the next frames
                # then start from where (and whether) a small face was found.
                while len(pending) > (2 * n_workers if det.points else 0):
                    collect()
            while pending:
                if cancel.is_set():
                    raise Cancelled()
                collect()
        if not det.indices:
            raise HiFaceError(empty_message(Path(path), s.start, info))
        if not any(det.found):
            raise HiFaceError(f"no face found in any of the {len(det.indices)} frames of {Path(path).name}")
        return det

    def focal_for(self, face: FaceResult | None, size: tuple[int, int]) -> float:
        if self.settings.focal:
            return float(self.settings.focal)
        h, w = size
        if face is not None and np.asarray(face.intrinsics).shape == (3, 3):
            ph, pw = (int(x) for x in face.image_size)
            return float(face.intrinsics[0, 0]) / max(ph, pw) * max(h, w)
        return self.settings.fit.focal_prior * max(h, w)

    def fit(self, det: _Detections, identity: np.ndarray, focal: float, progress: ProgressFn,
            cancel: threading.Event) -> dict:
        """Per found frame: expression, rotation, translation, residual; plus the identity used."""
        s = self.settings
        dev = self.device
        h, w = det.image_size
        c = torch.tensor([w / 2.0, h / 2.0], device=dev)
        K = np.array([[focal, 0, w / 2.0], [0, focal, h / 2.0], [0, 0, 1]])
        lm_all = np.stack(det.points).astype(np.float32)
        exp0_all = np.stack(det.exp0).astype(np.float32)
        found_idx = np.array(det.indices)[np.array(det.found)]
        iod = np.linalg.norm(lm_all[:, MP_OUTER_EYE[0]] - lm_all[:, MP_OUTER_EYE[1]], axis=1)
        sigma_all = np.maximum(s.fit.landmark_sigma * iod, 0.5).astype(np.float32)
        fixed = (self.layout.fixed.cpu().numpy()) & (np.arange(478) < 468)
        pts = self.points
        n = len(lm_all)
        openness_all = self._iris_openness(exp0_all)
        ident = torch.as_tensor(identity, dtype=torch.float32, device=dev)
        offsets = torch.zeros(478, 3, device=dev)

        def make_batch(sel, start_pose, pts, lm_all, openness_all, fixed):
            base_p = pts.point_base(ident)
            with torch.no_grad():
                obj = pts.landmarks(base_p, torch.as_tensor(exp0_all[sel], device=dev), ident).cpu().numpy()
            rot0, t0, last = _pnp_poses(obj, lm_all[sel], fixed, K, start_pose)
            gaps = np.diff(found_idx[sel]) / max(s.stride, 1) if len(sel) > 1 else np.zeros(0)
            return _Batch(lm=torch.as_tensor(lm_all[sel], device=dev),
                          sigma=torch.as_tensor(sigma_all[sel], device=dev),
                          exp0=torch.as_tensor(exp0_all[sel], device=dev),
                          rot0=torch.as_tensor(rot0, device=dev), t0=torch.as_tensor(t0, device=dev),
                          gap=torch.as_tensor(gaps, dtype=torch.float32, device=dev),
                          openness=torch.as_tensor(openness_all[sel], device=dev)), last

        identity_seconds = 0.0
        id_sel = np.unique(np.linspace(0, n - 1, min(s.identity_frames, n)).round().astype(int))
        ref_fit = None     # (frame, expression, rotation, translation) of a fitted frame
        if s.identity == "video":
            t = time.perf_counter()
            progress(DETECT_SHARE, "Estimating the performer's face shape")
            batch, _ = make_batch(id_sel, None, pts, lm_all, openness_all, fixed)
            batch.gap = torch.full_like(batch.gap, 1e6)   # frames far apart: no temporal tie
            e, r, t_, _, ident, offsets = _fit_batch(pts, batch, focal, c, s, ident, offsets,
                                                     s.identity_iterations, calibrate=s.calibrate,
                                                     fit_identity=True, cancel=cancel)
            id_fit = (e, r, t_)
            k = int(torch.argmin(e.sum(1)))
            ref_fit = (int(id_sel[k]), e[k].cpu().numpy(), r[k].cpu().numpy(), t_[k].cpu().numpy())
            identity_seconds = time.perf_counter() - t
        elif s.identity != "target":
            raise HiFaceError(f"unknown identity mode {s.identity!r} (video, target)")

        flow, flow_seconds = None, 0.0
        if s.flow_points > 0 and len(det.grays) == n:
            t = time.perf_counter()
            progress(DETECT_SHARE, "Following the skin")
            flow = self._surface_flow(det, ident, offsets, focal, c, K, lm_all, exp0_all,
                                      openness_all, fixed, ref_fit, make_batch, cancel)
            flow_seconds = time.perf_counter() - t
        if flow is not None:
            m = flow.points.shape[1]
            layout = _with_surface_points(self.layout, self.face, flow.tri_vertices, flow.bary)
            pts = _Points(layout)
            lm_all = np.concatenate([lm_all, flow.points], 1)
            valid = flow.valid.astype(np.float32)
            neutral = layout.points.neutral[:, 1].cpu().numpy()     # the anchors after the landmarks
            below = neutral[self.layout.n:] < neutral[MP_SUBNASALE]
            region_w = np.where(below, s.flow_lower_weight, 1.0).astype(np.float32)
            id_openness = np.concatenate([openness_all, s.flow_identity_weight * valid], 1)
            openness_all = np.concatenate([openness_all, s.flow_weight * valid * region_w], 1)
            fixed = np.concatenate([fixed, np.zeros(m, bool)])
            offsets = torch.cat([offsets, torch.zeros(m, 3, device=dev)])
            if s.identity == "video" and s.flow_identity_iterations > 0:
                t = time.perf_counter()
                # Continued from the first estimate: its frames start where they ended.
                batch, _ = make_batch(id_sel, None, pts, lm_all, id_openness, fixed)
                batch.gap = torch.full_like(batch.gap, 1e6)
                batch.rot0, batch.t0 = id_fit[1], id_fit[2]
                *_, ident, offsets = _fit_batch(pts, batch, focal, c, s, ident, offsets,
                                                s.flow_identity_iterations, fit_identity=True,
                                                cancel=cancel, exp_init=id_fit[0])
                identity_seconds += time.perf_counter() - t

        exp_out = np.zeros((n, exp0_all.shape[1]), np.float32)
        rot_out = np.zeros((n, 3, 3), np.float32)
        t_out = np.zeros((n, 3), np.float32)
        resid = np.zeros(n, np.float32)
        prev, pose_guess = None, None
        chunk = max(int(s.chunk), 1)
        for a in range(0, n, chunk):
            if cancel.is_set():
                raise Cancelled()
            sel = np.arange(a, min(a + chunk, n))
            batch, pose_guess = make_batch(sel, pose_guess, pts, lm_all, openness_all, fixed)
            e, r, t, res, *_ = _fit_batch(pts, batch, focal, c, s, ident, offsets, s.iterations,
                                          prev=prev, cancel=cancel)
            exp_out[sel], rot_out[sel], t_out[sel] = e.cpu().numpy(), r.cpu().numpy(), t.cpu().numpy()
            resid[sel] = res.cpu().numpy()
            prev = (e[-1],)
            progress(DETECT_SHARE + (1 - DETECT_SHARE) * 0.95 * sel[-1] / max(n - 1, 1),
                     f"Fitting expressions: frame {sel[-1] + 1} of {n}")
        return {"expression": exp_out, "rotation": rot_out, "translation": t_out,
                "residual_px": resid, "iod_px": iod, "identity": ident.cpu().numpy(),
                "identity_seconds": identity_seconds, "flow_seconds": flow_seconds,
                "flow_points": 0 if flow is None else int(flow.points.shape[1]),
                "flow_valid": 0.0 if flow is None else float(flow.valid.mean())}

    def _surface_flow(self, det, ident, offsets, focal, c, K, lm_all, exp0_all, openness_all,
                      fixed, ref_fit, make_batch, cancel):
        """Skin points followed from a reference frame (surface_flow.py). The reference is the
        least expressive of the identity frames, as fitted there; without those (the target's
        identity) the frame with the least expression by MediaPipe's scores, fitted alone.
        Every frame's first guess is its PnP pose with MediaPipe's expression."""
        from .surface_flow import surface_flow

        s = self.settings
        pts, n = self.points, len(lm_all)
        if ref_fit is None:
            k = int(np.argmin(exp0_all.sum(1)))
            batch, _ = make_batch(np.array([k]), None, pts, lm_all, openness_all, fixed)
            e, r, t, *_ = _fit_batch(pts, batch, focal, c, s, ident, offsets, s.iterations,
                                     cancel=cancel)
            ref_fit = (k, e[0].cpu().numpy(), r[0].cpu().numpy(), t[0].cpu().numpy())
        with torch.no_grad():
            obj = pts.landmarks(pts.point_base(ident), torch.as_tensor(exp0_all, device=self.device),
                                ident).cpu().numpy()
        rot, tr, _ = _pnp_poses(obj, lm_all, fixed, K, None)
        k, e, r, t = ref_fit
        # The frames may be kept smaller than the video (FLOW_MAX_SIDE): the camera with them.
        scale = det.grays[0].shape[1] / det.image_size[1]
        flow = surface_flow(self.model, ident.cpu().numpy(),
                            {"expression": e, "rotation": r, "translation": t},
                            exp0_all, rot, tr, focal * scale, c.cpu().numpy() * scale, det.grays,
                            det.grays[k], n_max=s.flow_points, min_score=s.flow_min_score,
                            win=s.flow_win)
        if flow is not None:
            flow.points /= scale
        return flow

    def _iris_openness(self, exp0: np.ndarray) -> np.ndarray:
        """(F, 478) landmark weight factors: 1, except the iris points, which count as much as
        their eye is open by MediaPipe's blink score (a closed lid hides the iris and its
        points are guesses that would drag the lids and gaze)."""
        names = [str(x) for x in self.model.exp_names]
        out = np.ones((len(exp0), 478), np.float32)
        for side, cols in (("L", slice(473, 478)), ("R", slice(468, 473))):  # subject's left: 473+
            if f"eyeBlink_{side}" in names:
                out[:, cols] = np.clip(1.0 - exp0[:, names.index(f"eyeBlink_{side}")], 0.0, 1.0)[:, None]
        return out

    # -- whole clip ----------------------------------------------------------------------------

    def track(self, path, face: FaceResult | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None) -> Track:
        """Track a video. `face` supplies the target identity (identity="target") and the
        focal length (unless settings.focal is set); it may be None with identity="video"."""
        from .smoothing import smooth_track

        s = self.settings
        cancel = cancel or threading.Event()
        report_progress = progress or (lambda f, m: None)
        if s.identity == "target" and face is None:
            raise HiFaceError("tracking with the target's identity needs its face result")
        if face is not None and list(map(str, face.exp_names)) != list(map(str, self.model.exp_names)):
            raise HiFaceError("the face result was made with a different face model")
        if not 0.0 <= float(s.smoothing) <= 1.0:
            raise HiFaceError(f"smoothing must be between 0 and 1, got {s.smoothing}")
        with self._lock:
            t0 = time.perf_counter()
            det = self.detect(path, report_progress, cancel)
            seconds = dict(det.seconds)

            t = time.perf_counter()
            # "video" starts the performer's shape from the mean face, not from the photo's.
            identity = (np.asarray(face.identity, np.float32) if s.identity == "target"
                        else np.zeros(self.face.n_identity, np.float32))
            focal = self.focal_for(face, det.image_size)
            with _single_thread_on_cpu(self.device):
                fit = self.fit(det, identity, focal, report_progress, cancel)
            seconds["fit"] = time.perf_counter() - t

            t = time.perf_counter()
            found = np.array(det.found)
            frames = np.array(det.indices, np.int32)
            times, timed = frame_times(frames, det.times, det.fps)
            exp, rot, tr, conf = fill_missing(found, fit["expression"], fit["rotation"],
                                              fit["translation"], _confidence(fit), times)
            exp, rot, tr = smooth_track(exp, rot, tr, times, s.smoothing)
            seconds["smooth"] = time.perf_counter() - t
            seconds["total"] = time.perf_counter() - t0
            report_progress(1.0, "Done")

            h, w = det.image_size
            n_frames = len(frames)
            filled = int((~found).sum())
            report = {
                "frames": n_frames,
                "frames_with_face": int(found.sum()),
                "frames_without_face": filled,
                "filled_frames": filled,
                "seconds": seconds,
                "frames_per_second": n_frames / max(seconds["total"], 1e-9),
                "device": str(self.device),
                "identity": s.identity,
                "identity_seconds": fit["identity_seconds"],
                "flow_seconds": fit["flow_seconds"],
                "flow_points": fit["flow_points"],
                "flow_valid_fraction": fit["flow_valid"],
                "performer_identity": [float(x) for x in fit["identity"]] if s.identity == "video" else None,
                "focal_px": focal,
                "smoothing": float(s.smoothing),
                "start": int(s.start), "end": s.end, "stride": int(s.stride),
                "fps": det.fps,
                "video_rotation": det.rotation,
                "frame_times": "container" if timed else "frame numbers",
                "variable_frame_rate": _variable_rate(times, frames, det.fps),
                "residual_iod_mean": float(np.mean(fit["residual_px"] / fit["iod_px"])),
                "residual_iod_max": float(np.max(fit["residual_px"] / fit["iod_px"])),
                "residual_px_mean": float(np.mean(fit["residual_px"])),
                "most_faces_in_a_frame": det.most_faces,
                "frames_found_in": dict(det.found_in),
                "notes": ([f"{filled} of {n_frames} frames had no face: filled from their neighbours"]
                          if filled else [])
                         + ([f"up to {det.most_faces} faces in a frame: following the one that "
                             "was largest when first seen"] if det.most_faces > 1 else [])
                         + ([f"the skin flow is off: the clip is too long to keep its frames "
                             f"within {s.flow_max_bytes / 2**20:.0f} MB, so it is tracked from its "
                             "landmarks alone"] if det.grays_dropped else [])
                         + (["the face is small in the frame: found in a search of image tiles "
                             f"and followed in crops around it ({det.found_in.get('crop', 0)} "
                             "frames)"] if det.found_in.get("tiles") else []),
            }
            k = np.array([[focal, 0, w / 2.0], [0, focal, h / 2.0], [0, 0, 1]], np.float32)
            return Track(expression=exp.astype(np.float32), exp_names=np.asarray(self.model.exp_names),
                         rotation=rot.astype(np.float32), translation=tr.astype(np.float32),
                         confidence=conf.astype(np.float32), face_found=found,
                         frame_indices=frames, fps=float(det.fps), intrinsics=k,
                         image_size=np.array([h, w], np.int32), source_path=str(Path(path).resolve()),
                         report=report, frame_times=times)


def _confidence(fit: dict) -> np.ndarray:
    r = fit["residual_px"] / np.maximum(fit["iod_px"], 1e-6)
    return np.exp(-(r / CONFIDENCE_RESIDUAL_IOD) ** 2).astype(np.float32)


def _variable_rate(times: np.ndarray, frames: np.ndarray, fps: float) -> bool:
    """Whether the frames' own times leave frame number / fps by more than half a frame."""
    nominal = (frames - frames[0]) / fps
    return bool(len(times) and np.abs((times - times[0]) - nominal).max() > 0.5 / fps)


def fill_missing(found: np.ndarray, exp: np.ndarray, rot: np.ndarray, tr: np.ndarray,
                 conf: np.ndarray, times: np.ndarray | None = None):
    """Expand per-found-frame arrays to all frames: linear in time (`times`, default the frame
    order) between the neighbours with a face (rotation by slerp), held at the ends;
    confidence 0 where filled."""
    from scipy.spatial.transform import Rotation, Slerp

    found = np.asarray(found, bool)
    n = len(found)
    have = np.nonzero(found)[0]
    out_e = np.zeros((n, exp.shape[1]), np.float32)
    out_r = np.zeros((n, 3, 3), np.float32)
    out_t = np.zeros((n, 3), np.float32)
    out_c = np.zeros(n, np.float32)
    out_e[have], out_r[have], out_t[have], out_c[have] = exp, rot, tr, conf
    if len(have) == n:
        return out_e, out_r, out_t, out_c
    x = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    for k in range(exp.shape[1]):
        out_e[:, k] = np.interp(x, x[have], exp[:, k])
    for k in range(3):
        out_t[:, k] = np.interp(x, x[have], tr[:, k])
    if len(have) == 1:
        out_r[:] = rot[0]
    else:
        clamped = np.clip(x, x[have[0]], x[have[-1]])
        out_r[:] = Slerp(x[have], Rotation.from_matrix(rot.astype(np.float64)))(clamped).as_matrix()
    return out_e, out_r, out_t, out_c


def track_video(path, face: FaceResult | None = None, settings: TrackSettings | None = None,
                progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                models=None) -> Track:
    """One-shot: load the models (or share a Reconstructor's), track, return the Track."""
    tracker = Tracker(models, settings)
    try:
        return tracker.track(path, face, progress, cancel)
    finally:
        tracker.close()


def bench_tracking(runs: int = 5, clip=None, device: str = "auto", smoothing: float = 0.5) -> dict:
    """End-to-end tracking speed (decode, detect, fit, smooth) on a video, JSON-able medians of
    `runs` runs after one warm-up run (torch's and scipy's first-call costs are not per clip).
    Default clip: the first GRID sample beside the checkout (360x288, 25 fps, 75 frames)."""
    import statistics

    if clip is None:
        grid = Path(__file__).resolve().parents[2].parent / "shared" / "samples" / "grid"
        clips = sorted(grid.glob("*.mpg"))
        if not clips:
            return {"error": f"no clip given and no GRID sample in {grid}"}
        clip = clips[0]
    t = time.perf_counter()
    tracker = Tracker(None, TrackSettings(device=device, smoothing=smoothing))
    load = time.perf_counter() - t
    tracker.track(clip)                     # warm-up
    totals, fps, stages = [], [], []
    track = None
    for _ in range(max(1, int(runs))):
        t = time.perf_counter()
        track = tracker.track(clip)
        totals.append(time.perf_counter() - t)
        fps.append(track.n_frames / totals[-1])
        stages.append(track.report["seconds"])
    tracker.close()
    keys = [k for k in stages[0] if k != "total"]
    return {
        "clip": str(clip),
        "frames": track.n_frames,
        "image_size": [int(x) for x in track.image_size],
        "runs": len(totals),
        "load_models_s": load,
        "median_s": statistics.median(totals),
        "runs_s": totals,
        "frames_per_second_median": statistics.median(fps),
        "frames_per_second_runs": fps,
        "stage_medians_s": {k: statistics.median(s[k] for s in stages) for k in keys},
        "stage_medians_ms_per_frame": {k: 1000 * statistics.median(s[k] for s in stages) / track.n_frames
                                       for k in keys},
        "device": str(tracker.device),
        "torch_threads": torch.get_num_threads(),
    }
