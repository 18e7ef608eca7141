"""The lighting fits on the face model's own normals, under known ambient + distant lights, with an
albedo that is not constant: a symmetric large-scale profile (paler forehead, darker lower face
and lips) and dark marks on one cheek, as a face has."""
from __future__ import annotations

import numpy as np
import pytest

from hiface_blender.core.geometry import vertex_normals
from hiface_blender.core.lighting import (
    cap_directions, directional_sh, estimate_directional, estimate_sh, sh_gradient, sh_shading)
from hiface_blender.core.synthetic import camera_vertices, rotation_ypr

FACE = slice(0, 6706)     # the narrow face: forehead to chin, cheek to cheek
LIGHTS = {                # towards the light (camera axes, y down, z forward), ambient, diffuse
    "frontal": (np.array([-0.45, -0.5, -1.0]), 0.35, 0.75),
    "side": (np.array([-0.9, -0.35, -0.45]), 0.2, 0.9),
    "top": (np.array([0.2, -0.9, -0.6]), 0.25, 0.85),
}


def _face(model, light, yaw=12.0, seed=0):
    """Per visible face vertex: intensity, normal (camera frame) and the mirror vertex's
    intensity and normal (nan where the mirror is not visible); and the true shading."""
    towards, ambient, diffuse = light
    l = towards / np.linalg.norm(towards)
    v = camera_vertices(model, np.zeros(model.id_basis.shape[0]), np.zeros(len(model.exp_names)),
                        rotation_ypr(yaw, -4.0, 2.0), np.zeros(3))
    n = vertex_normals(v.astype(np.float64), model.tris)
    shade = ambient + diffuse * np.clip(n @ l, 0, None)
    rest = model.neutral
    height = (rest[:, 1] - rest[FACE, 1].min()) / np.ptp(rest[FACE, 1])
    albedo = 0.45 + 0.25 * height                        # paler upwards, symmetric
    lips = np.exp(-0.5 * (np.hypot(rest[:, 0] / 2.5, (rest[:, 1] - np.percentile(rest[FACE, 1], 22)) / 0.8)) ** 2)
    albedo = albedo * (1 - 0.3 * lips)
    rng = np.random.default_rng(seed)
    marks = np.zeros(len(rest))
    for c in rng.choice(np.flatnonzero(rest[FACE, 0] > 3.0), 12, replace=False):
        marks = np.maximum(marks, np.linalg.norm(rest - rest[c], axis=1) < 0.4)
    albedo = albedo * (1 - 0.55 * marks)                 # one-sided dark marks
    intensity = albedo * shade * (1 + 0.02 * rng.standard_normal(len(rest)))
    visible = np.zeros(len(rest), bool)
    visible[FACE] = n[FACE, 2] < -0.15
    m = np.asarray(model.mirror)
    ok = visible & visible[m]
    mi = np.where(ok, intensity[m], np.nan)
    mn = np.where(ok[:, None], n[m], np.nan)
    sel = np.flatnonzero(visible)
    return intensity[sel], n[sel], mi[sel], mn[sel], shade[sel], l, diffuse / shade[sel]


def _relative_gradient_error(coeffs, n, l, true_scale):
    """Median angle (degrees) and median length ratio between the fitted and the true tangential
    gradient of log shading: what the detail solve divides by."""
    g = sh_gradient(n, coeffs) / sh_shading(n, coeffs)[:, None]
    t = l[None, :] * true_scale[:, None]
    tangent = lambda x: x - (x * n).sum(1, keepdims=True) * n
    g, t = tangent(g), tangent(t)
    keep = np.linalg.norm(t, axis=1) > 0.05
    g, t = g[keep], t[keep]
    cos = (g * t).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(t, axis=1))
    return (float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1))))),
            float(np.median(np.linalg.norm(g, axis=1) / np.linalg.norm(t, axis=1))))


def test_cap_directions_cover_the_cap():
    c = np.array([0.3, -0.5, -0.8])
    c /= np.linalg.norm(c)
    d = cap_directions(c, 8.0, 150)
    ang = np.degrees(np.arccos(np.clip(d @ c, -1, 1)))
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    assert ang[0] < 1e-6 and ang.max() <= 8.0 + 1e-6 and ang.max() > 7.0
    assert np.median(ang) > 4.0      # spread over the cap, not bunched at the centre


@pytest.mark.parametrize("name", sorted(LIGHTS))
def test_directional_fit_recovers_the_light(face_model_data, name):
    model = face_model_data
    I, n, mi, mn, shade, l, scale = _face(model, LIGHTS[name])
    a, d, l_fit = estimate_directional(I, n, mirror_intensity=mi, mirror_normals=mn)
    _, ambient, diffuse = LIGHTS[name]
    err = np.degrees(np.arccos(np.clip(l_fit @ l, -1, 1)))
    coeffs = directional_sh(a, d, l_fit, n)
    ang, length = _relative_gradient_error(coeffs, n, l, scale)
    sh = estimate_sh(I, n, mirror_intensity=mi, mirror_normals=mn)
    ang_sh, length_sh = _relative_gradient_error(sh, n, l, scale)
    print(f"\n{name}: direction error {err:.1f} deg, ambient / diffuse {a / d:.3f} (true "
          f"{ambient / diffuse:.3f}); shading gradient error {ang:.1f} deg, length x{length:.2f}; "
          f"nine-term fit: {ang_sh:.1f} deg, x{length_sh:.2f}")
    assert err < 4.0
    assert abs(a / d - ambient / diffuse) < 0.25 * ambient / diffuse + 0.03
    assert ang < 4.0 and abs(length - 1) < 0.15
    # Its irradiance, written as SH over the face's normals, is the model's own to a few per cent
    # (nine terms round off the shadow line of a grazing light).
    S = sh_shading(n, coeffs)
    target = a + d * np.clip(n @ l_fit, 0, None)
    assert np.median(np.abs(S / target - 1)) < 0.05
    # Against the nine-term fit of the same data: the shading gradient is closer to the truth.
    assert ang < ang_sh


def test_too_few_samples_give_none():
    n = np.tile([[0.0, 0.0, -1.0]], (20, 1))
    assert estimate_directional(np.ones(20), n) is None
