"""The iris colour read from the photo: renders with known iris colours, and the astronaut."""
from __future__ import annotations

import numpy as np

from hiface_blender.core.iris import iris_colour


def _chroma(c):
    c = np.asarray(c, np.float64)
    return c / c.sum()


def test_iris_colour_of_renders_with_known_irises(face_model_data, landmarker_path, reconstructor):
    """Eight synthetic renders (skin from a real photo, irises in four colours, yaw up to 28
    degrees): the measured colour has the true iris's hue (its chromaticity within 0.02) and
    is nearer it than any other of the four. Its brightness is the shaded one, as the photo
    texture's is."""
    from hiface_blender.core import synthetic
    from hiface_blender.core.landmarks import LandmarkDetector

    skin = synthetic.astronaut_skin_texture(reconstructor)
    palette = np.array([[92, 62, 40], [60, 40, 28], [70, 100, 120], [90, 100, 70]], np.float64)
    errors = []
    with LandmarkDetector(landmarker_path) as det:
        for _, case in synthetic.synthetic_cases(face_model_data, 8, 0):
            img = synthetic.render_case(face_model_data, case, skin)
            got = iris_colour(img, det.detect(img).points)
            assert got.shape == (3,) and 0.05 < got.max() <= 1.0
            err = np.abs(_chroma(got) - _chroma(case.iris_rgb)).max()
            errors.append(err)
            nearest = palette[np.argmin([np.abs(_chroma(got) - _chroma(p)).max() for p in palette])]
            assert np.array_equal(nearest, case.iris_rgb), (got * 255, case.iris_rgb)
    print(f"\niris chromaticity error: max {max(errors):.4f}, mean {np.mean(errors):.4f}")
    assert max(errors) < 0.02


def test_iris_colour_of_a_real_photo_and_of_irises_too_small(astronaut, landmarker_path):
    from hiface_blender.core.landmarks import LandmarkDetector

    with LandmarkDetector(landmarker_path) as det:
        points = det.detect(astronaut).points
    brown = iris_colour(astronaut, points)
    # Her eyes are brown: red over green over blue, well apart.
    assert brown.shape == (3,) and brown[0] > brown[1] > brown[2] and brown[0] > 1.8 * brown[2]
    # The same eyes at a quarter of the size: under 3 px of radius, no colour is claimed.
    small = np.ascontiguousarray(astronaut[::4, ::4])
    assert iris_colour(small, points / 4).size == 0
    # Landmarks without the iris points (a 68-point backend) give none either.
    assert iris_colour(astronaut, points[:68]).size == 0
