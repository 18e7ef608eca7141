"""A performance: a video of an ICT face (real skin texture) performing known expression curves
with head motion, rendered by core.synthetic. The tracker's synthetic truth, and the demo's
driving video where no real clip is at hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .model_data import FaceModelData
from .synthetic import Light, astronaut_skin_texture, make_background, render_face, rotation_ypr

PERFORMANCE_SIZE = (288, 360)
PERFORMANCE_FRAMES = 80
PERFORMANCE_FPS = 25.0


def bump(t, centre, width):
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def gaze_curves(n: int = PERFORMANCE_FRAMES) -> dict[str, np.ndarray]:
    """Both eyes looking left and right (0.6 at the ends, about 18 degrees) every 37 frames,
    up (0.6) and then down (0.7) once, as eyeLook weights."""
    t = np.arange(n, dtype=np.float64)
    side = 0.6 * np.sin(2 * np.pi * t / 37.0)          # towards the face's own left
    vertical = 0.6 * bump(t, 28, 5) - 0.7 * bump(t, 58, 5)
    c = {"eyeLookOut_L": side, "eyeLookIn_R": side, "eyeLookIn_L": -side, "eyeLookOut_R": -side}
    for s in ("L", "R"):
        c[f"eyeLookUp_{s}"], c[f"eyeLookDown_{s}"] = vertical, -vertical
    return {k: np.clip(v, 0, 1).astype(np.float32) for k, v in c.items()}


def performance_curves(n: int = PERFORMANCE_FRAMES) -> dict[str, np.ndarray]:
    """Smooth, mutually distinct curves: mouth shapes take turns (a smile and a pucker do not
    overlap), the smile is lopsided, blinks are short (3-5 frames, one of them half-closed).
    Blinks and the inner brow move both sides together, as people do (ARKit has a single
    browInnerUp): MediaPipe's landmarks barely separate a wink or one raised inner brow."""
    t = np.arange(n, dtype=np.float64)
    blink = 1.0 * bump(t, 20, 1.3) + 0.6 * bump(t, 45, 1.3) + 1.0 * bump(t, 66, 1.3)
    brow = 0.35 + 0.35 * np.sin(2 * np.pi * t / 55.0)
    c = {
        "jawOpen": 0.55 * bump(t, 12, 5) + 0.35 * bump(t, 62, 6),
        "mouthSmile_L": 0.7 * bump(t, 30, 6) + 0.3 * bump(t, 72, 4),
        "mouthSmile_R": 0.7 * bump(t, 34, 6),
        "mouthPucker": 0.7 * bump(t, 50, 5),
        "eyeBlink_L": blink, "eyeBlink_R": blink,
        "browInnerUp_L": brow, "browInnerUp_R": brow,
    }
    return {k: np.clip(v, 0, 1).astype(np.float32) for k, v in c.items()}


def performance_pose(n: int = PERFORMANCE_FRAMES):
    """Yaw up to 20 degrees, pitch up to 12, a little roll and sway, all smooth."""
    t = np.arange(n, dtype=np.float64)
    yaw = 20.0 * np.sin(2 * np.pi * t / 64.0)
    pitch = 12.0 * np.sin(2 * np.pi * t / 45.0 + 0.7)
    roll = 4.0 * np.sin(2 * np.pi * t / 80.0)
    return yaw, pitch, roll


def write_performance(path, model, skin, seed: int = 7, n: int = PERFORMANCE_FRAMES,
                      gaze: bool = False) -> dict:
    """Render a face performing the curves above with head motion (and with `gaze`, the eye
    movements of gaze_curves) and write it with OpenCV's MPEG-4 encoder (a driving video with
    known truth, and the demo's clip where no real one is at hand); return the truth."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = PERFORMANCE_SIZE
    names = [str(x) for x in model.exp_names]
    identity = rng.standard_normal(model.id_basis.shape[0]).astype(np.float32)
    curves = performance_curves(n)
    if gaze:
        curves.update(gaze_curves(n))
    expression = np.zeros((n, len(names)), np.float32)
    for k, v in curves.items():
        expression[:, names.index(k)] = v
    yaw, pitch, roll = performance_pose(n)
    f = 1.15 * w
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float32)
    depth = f * 160.0 / (0.36 * w)
    background = make_background(rng, (h, w))
    light = Light(direction=(-0.3, -0.4, -1.0), ambient=0.45, diffuse=0.6)
    rotations, translations = [], []
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), PERFORMANCE_FPS, (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write the video {path}")
    try:
        for i in range(n):
            rot = rotation_ypr(yaw[i], pitch[i], roll[i]).astype(np.float32)
            tr = np.array([8.0 * np.sin(i / 13.0), 4.0 * np.cos(i / 17.0), depth], np.float32)
            img = render_face(model, identity, expression[i], rot, tr, K, (h, w), skin,
                              background=background, light=light, noise_sigma=1.5, seed=i)
            writer.write(np.ascontiguousarray(img[:, :, ::-1]))
            rotations.append(rot)
            translations.append(tr)
    finally:
        writer.release()
    return {"identity": identity, "expression": expression, "curves": curves, "names": names,
            "rotation": np.array(rotations), "translation": np.array(translations), "K": K,
            "yaw": yaw, "pitch": pitch, "roll": roll}


def main(argv=None) -> int:
    """`python -m hiface_blender.core.performance OUT.mp4 [--seed N]`: write the
    performance clip (the demo's driving video where no real clip is at hand)."""
    import argparse

    from .. import paths

    p = argparse.ArgumentParser(prog="python -m hiface_blender.core.performance")
    p.add_argument("output", metavar="OUT.mp4")
    p.add_argument("--seed", type=int, default=7, help="the performer's identity (7)")
    args = p.parse_args(argv)
    model = FaceModelData.load(paths.face_model_path())
    write_performance(Path(args.output), model, astronaut_skin_texture(), seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
