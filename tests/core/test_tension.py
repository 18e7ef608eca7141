"""Per-vertex tension of the expression shapes on the ICT neutral."""
from __future__ import annotations

import numpy as np

from hiface_blender.core.tension import (
    ExpressionTension, expression_tension, mesh_edges, model_edges, vertex_tension)


def _region(model, centre_vertex, radius_cm):
    d = np.linalg.norm(model.neutral - model.neutral[centre_vertex], axis=1)
    return (d < radius_cm) & (np.arange(model.n_vertices) < 9409)


def _ball(model, centre, radius_cm):
    d = np.linalg.norm(model.neutral - centre, axis=1)
    return (d < radius_cm) & (np.arange(model.n_vertices) < 9409)


def test_uniform_scale_is_uniform_tension():
    v = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    tris = np.array([[i, i + 1, i + 2] for i in range(28)])
    t = vertex_tension(v, (0.8 * v)[None], mesh_edges(tris))[0]
    assert np.allclose(t, -0.2, atol=1e-5)


def test_shape_edges_found_once_give_the_same_tension_for_any_person(face_model_data):
    """An engine keeps one ExpressionTension; for another person's neutral mesh and another weight
    it gives what deforming that mesh by each shape gives."""
    m = face_model_data
    edges = model_edges(m)
    tension = ExpressionTension(m.exp_basis, edges)
    rng = np.random.default_rng(4)
    for weight in (1.0, 0.5):
        neutral = m.neutral + np.tensordot(rng.standard_normal(100).astype(np.float32), m.id_basis, 1)
        direct = vertex_tension(neutral, neutral[None] + weight * m.exp_basis, edges)
        got = tension(neutral, weight).astype(np.float32)
        # float16 storage: within half a step of the value.
        assert np.all(np.abs(got - direct) <= np.abs(direct) * 2 ** -11 + 1e-4)


def test_smile_compresses_its_own_cheek_and_jaw_open_stretches_the_chin(face_model_data):
    m = face_model_data
    T = expression_tension(m.neutral, m.exp_basis, model_edges(m)).astype(np.float32)
    assert T.shape == (len(m.exp_names), m.n_vertices) and np.isfinite(T).all()
    names = [str(n) for n in m.exp_names]
    lm = np.asarray(m.landmarks68)
    # Skin lateral of the outer eye corners (Multi-PIE 45 is at +x, the subject's left; the lids
    # themselves stretch) and the cheeks above the mouth corners.
    x = m.neutral[:, 0]
    eye_l = _region(m, lm[45], 2.0) & (x > m.neutral[lm[45], 0])
    eye_r = _region(m, lm[36], 2.0) & (x < m.neutral[lm[36], 0])
    up = np.array([0.0, 2.0, 0.0], np.float32)
    cheek_l = _ball(m, m.neutral[lm[54]] + up, 1.2)
    cheek_r = _ball(m, m.neutral[lm[48]] + up, 1.2)
    smile_l = T[names.index("mouthSmile_L")]
    for left, right in ((eye_l, eye_r), (cheek_l, cheek_r)):
        assert smile_l[left].mean() < -0.005, smile_l[left].mean()
        assert smile_l[left].mean() < smile_l[right].mean() - 0.005
    smile_r = T[names.index("mouthSmile_R")]
    assert smile_r[cheek_r].mean() < smile_r[cheek_l].mean() - 0.005
    # jawOpen stretches the lower lip and the chin's front between lip and chin tip (ICT's
    # shape bunches the skin under the chin tip itself by about 2 %).
    jaw = T[names.index("jawOpen")]
    lower_lip = _region(m, lm[57], 1.0)
    chin_front = _ball(m, 0.5 * (m.neutral[lm[57]] + m.neutral[lm[8]]), 1.5)
    assert jaw[lower_lip].mean() > 0.05, jaw[lower_lip].mean()
    assert jaw[chin_front].mean() > 0.02, jaw[chin_front].mean()
    # Shapes that do not move a vertex leave its tension at zero.
    assert np.abs(T[:, m.vertex_part == 7]).max() < 1e-3   # eyeball_l never changes its edges
