"""The colour of the irises, read from the photo at MediaPipe's iris landmarks.

Each iris is MediaPipe's centre point and four rim points (468-472 and 473-477). Its colour is
the median of the pixels between 45 % and 85 % of the iris radius (outside the pupil, inside
the dark limbal ring) that lie inside the eye's lid contour, with the brightest fifth (the
window's reflection) and the darkest fifth (lashes, lid shadow) left out.
"""
from __future__ import annotations

import cv2
import numpy as np

IRISES = ((468, (469, 470, 471, 472)), (473, (474, 475, 476, 477)))
# Lid contours of the two eyes, in order around each opening.
EYE_CONTOURS = (
    (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7),
    (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249),
)
MIN_RADIUS_PX = 3.0    # smaller irises hold too few pixels to say their colour
MIN_PIXELS = 12


def iris_colour(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(3,) float32 sRGB in 0..1, or an empty array when no iris is large and open enough.
    `points`: (478, 2+) MediaPipe landmarks in pixels."""
    p = np.asarray(points, np.float64)[:, :2]
    if len(p) < 478:
        return np.zeros(0, np.float32)
    h, w = rgb.shape[:2]
    samples = []
    for (centre, rim), contour in zip(IRISES, EYE_CONTOURS):
        c = p[centre]
        r = float(np.linalg.norm(p[list(rim)] - c, axis=1).mean())
        if r < MIN_RADIUS_PX:
            continue
        x0, y0 = max(int(c[0] - r) - 1, 0), max(int(c[1] - r) - 1, 0)
        x1, y1 = min(int(c[0] + r) + 2, w), min(int(c[1] + r) + 2, h)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(xx - c[0], yy - c[1]) / r
        opening = np.zeros((y1 - y0, x1 - x0), np.uint8)
        poly = np.round(p[list(contour)] - [x0, y0]).astype(np.int32)
        cv2.fillPoly(opening, [poly], 1)
        keep = (d >= 0.45) & (d <= 0.85) & (opening > 0)
        px = rgb[y0:y1, x0:x1][keep].astype(np.float32)
        if len(px) < MIN_PIXELS:
            continue
        lum = px @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        lo, hi = np.percentile(lum, [20, 80])
        samples.append(px[(lum >= lo) & (lum <= hi)])
    if not samples:
        return np.zeros(0, np.float32)
    return (np.median(np.concatenate(samples), axis=0) / 255.0).astype(np.float32)
