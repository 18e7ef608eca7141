"""Temporal smoothing of tracked curves: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012).

A low-pass filter whose cutoff rises with the signal's speed: slow drifts and jitter are smoothed
hard, fast motion (a blink, a jaw snap) passes with little lag. The whole clip is known when
filtering, so the filter runs forwards and backwards and the two are averaged, which cancels
most of the causal filter's lag. Rotations are filtered as unit quaternions kept on one
hemisphere, then renormalised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Strength 0..1 maps the minimum cutoff log-linearly from MAX_CUTOFF to MIN_CUTOFF (Hz).
MAX_CUTOFF = 8.0
MIN_CUTOFF = 0.3
# Cutoff (Hz) of the speed estimate that opens the filter. Expressions use a quicker one: a
# speaker's lips close for two or three frames (p, b, m), and a 1 Hz estimate of their speed
# comes too late to let that through. Measured with the skin flow on (README): jawOpen vs lip
# gap on the five GRID clips 0.92-0.98 / 0.79 (lwbsza) -> 0.92-0.98 / 0.84; the six synthetic
# performers' lowest pucker 0.93 -> 0.90, their other curves within 0.012. Head pose keeps the
# slower one.
D_CUTOFF = 1.0
D_CUTOFF_EXPRESSION = 3.0
# Per-unit speed scales for beta: expression weights (1/s), rotation (rad/s), translation (mm/s).
BETA_EXPRESSION = 10.0
BETA_ROTATION = 3.0
BETA_TRANSLATION = 1.5 / 100.0


@dataclass
class OneEuroParams:
    min_cutoff: float   # Hz, cutoff when the signal is still
    beta: float         # cutoff increase per unit of speed
    d_cutoff: float = D_CUTOFF


def params_for_strength(strength: float, beta_scale: float = BETA_EXPRESSION,
                        d_cutoff: float = D_CUTOFF) -> OneEuroParams | None:
    """User strength 0..1 -> filter parameters; None for 0 (no filtering)."""
    s = float(np.clip(strength, 0.0, 1.0))
    if s <= 0.0:
        return None
    min_cutoff = math.exp(math.log(MAX_CUTOFF) + s * (math.log(MIN_CUTOFF) - math.log(MAX_CUTOFF)))
    return OneEuroParams(min_cutoff=min_cutoff, beta=beta_scale * (1.0 - 0.9 * s), d_cutoff=d_cutoff)


def _alpha(cutoff, dt):
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro(x: np.ndarray, times: np.ndarray, p: OneEuroParams) -> np.ndarray:
    """Causal One-Euro filter of x (F, D) sampled at `times` (F,) seconds, per column."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    # Start from the mean of about one time constant of samples, not from the first (noisy)
    # one, whose error a slow cutoff would otherwise carry for many frames.
    dt0 = max(float(np.median(np.diff(times))) if len(x) > 1 else 1.0, 1e-6)
    m = int(np.clip(round(1.0 / (2.0 * np.pi * p.min_cutoff * dt0)), 1, len(x)))
    out[0] = x[:m].mean(0)
    dx_hat = np.zeros(x.shape[1:])
    a_d = None
    for i in range(1, len(x)):
        dt = max(float(times[i] - times[i - 1]), 1e-6)
        a_d = _alpha(p.d_cutoff, dt)
        dx = (x[i] - out[i - 1]) / dt
        dx_hat = dx_hat + a_d * (dx - dx_hat)
        a = _alpha(p.min_cutoff + p.beta * np.abs(dx_hat), dt)
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def one_euro_zero_phase(x: np.ndarray, times: np.ndarray, p: OneEuroParams | None) -> np.ndarray:
    """Forward and backward passes averaged: no net lag for a whole clip."""
    x = np.asarray(x, np.float64)
    if p is None or len(x) < 3:
        return x.copy()
    fwd = one_euro(x, times, p)
    bwd = one_euro(x[::-1], -np.asarray(times)[::-1], p)[::-1]
    return 0.5 * (fwd + bwd)


def continuous_quaternions(rotations: np.ndarray) -> np.ndarray:
    """(F, 3, 3) -> (F, 4) quaternions (x, y, z, w), each on the hemisphere of the one before."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(rotations, np.float64)).as_quat()
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0:
            q[i] = -q[i]
    return q


def smooth_track(expression: np.ndarray, rotation: np.ndarray, translation: np.ndarray,
                 times: np.ndarray, strength: float):
    """Smoothed copies of (F, K) expression weights (kept in [0, 1]), (F, 3, 3) rotations and
    (F, 3) translations sampled at `times` seconds."""
    from scipy.spatial.transform import Rotation

    times = np.asarray(times, np.float64)
    pe = params_for_strength(strength, BETA_EXPRESSION, D_CUTOFF_EXPRESSION)
    if pe is None or len(times) < 3:
        return (np.asarray(expression, np.float32).copy(), np.asarray(rotation, np.float32).copy(),
                np.asarray(translation, np.float32).copy())
    exp = np.clip(one_euro_zero_phase(expression, times, pe), 0.0, 1.0)
    q = continuous_quaternions(rotation)
    # A quaternion component moves at about half the rotation's angular speed.
    q = one_euro_zero_phase(q, times, params_for_strength(strength, 2.0 * BETA_ROTATION))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rot = Rotation.from_quat(q).as_matrix()
    tr = one_euro_zero_phase(translation, times, params_for_strength(strength, BETA_TRANSLATION))
    return exp.astype(np.float32), rot.astype(np.float32), tr.astype(np.float32)
