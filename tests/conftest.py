"""Shared fixtures: the repository on sys.path and a real sample photo."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def astronaut_png(tmp_path_factory) -> Path:
    """scikit-image's astronaut (public-domain NASA portrait, 512x512 RGB) as a PNG file."""
    import numpy as np
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("samples") / "astronaut.png"
    Image.fromarray(np.asarray(data.astronaut())).save(path)
    return path
