"""Detail transfer between two reconstructions (numpy only): the target person driven by the
source's expression, with the source's expression-dependent wrinkles (its compressed and
stretched maps). All faces share the ICT UV layout, so the maps carry over texel for texel;
the target keeps its identity, neutral, texture, static detail and pose."""
from __future__ import annotations

import dataclasses

import numpy as np

from .result import FaceResult


def _square(m: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(m, np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0:
        raise ValueError(f"{what} is not a square map (shape {m.shape})")
    return m


def _resample(m: np.ndarray, size: int) -> np.ndarray:
    if m.shape[0] == size:
        return m.copy()
    import cv2

    # Area averaging when shrinking keeps fine wrinkles from aliasing.
    interp = cv2.INTER_AREA if m.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(m, (size, size), interpolation=interp).astype(np.float32)


def transfer_result(source: FaceResult, target: FaceResult) -> FaceResult:
    """The target with the source's expression and dynamic detail maps (resampled to the
    target's map size when the two differ). Raises ValueError, leaving both unchanged, when
    either has no detail or the two do not belong to one face model."""
    for name, r in (("source", source), ("target", target)):
        if not r.has_detail:
            raise ValueError(f"the {name} face has no detail maps (reconstruct it with detail)")
    src_names = [str(n) for n in np.asarray(source.exp_names).ravel()]
    if src_names != [str(n) for n in np.asarray(target.exp_names).ravel()]:
        raise ValueError("the two faces' expression names differ (not the same face model)")
    if np.asarray(source.expression).shape != np.asarray(target.expression).shape:
        raise ValueError("the two faces' expression vectors differ in length")
    size = _square(target.detail_static, "the target's static detail").shape[0]
    compressed = _square(source.detail_compressed, "the source's compressed detail")
    stretched = _square(source.detail_stretched, "the source's stretched detail")
    if compressed.shape != stretched.shape:
        raise ValueError(f"the source's dynamic maps differ in size "
                         f"({compressed.shape} and {stretched.shape})")
    report = dict(target.report)
    report["transfer"] = {"expression_and_dynamic_detail_from": str(source.source_path)}
    return dataclasses.replace(
        target,
        expression=np.asarray(source.expression, np.float32).copy(),
        detail_compressed=_resample(compressed, size),
        detail_stretched=_resample(stretched, size),
        report=report,
    )
