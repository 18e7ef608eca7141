"""Photo -> FaceResult: the stages in order, with a progress callback and a cancel event.

Runs in a worker thread inside Blender (never touches bpy) or in the CLI. Models are loaded once
per Reconstructor; `run` may be called many times.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import Cancelled, HiFaceError
from .result import FaceResult

QUALITY = {
    # fitting iterations, texture size
    "fast": (150, 512),
    "standard": (300, 1024),
    "high": (600, 2048),
}

ProgressFn = Callable[[float, str], None]


@dataclass
class ReconstructSettings:
    device: str = "auto"
    quality: str = "standard"
    landmark_backend: str = "mediapipe"
    data_dir: str | None = None
    detail: bool = True          # static + dynamic detail maps and expression tension
    detail_size: int = 1024      # 512 ... 4096
    fill_neck_clothing: bool = True   # clothing on the neck is filled with skin in the texture


class Reconstructor:
    def __init__(self, settings: ReconstructSettings | None = None) -> None:
        from .. import paths
        from .face_model import FaceModel, choose_device
        from .landmarks import make_detector
        from .model_data import FaceModelData

        self.settings = settings or ReconstructSettings()
        if self.settings.quality not in QUALITY:
            raise HiFaceError(f"unknown quality {self.settings.quality!r} (choose from {', '.join(QUALITY)})")
        self.device = choose_device(self.settings.device)
        data_dir = paths.data_dir(self.settings.data_dir)
        t = time.perf_counter()
        self.model = FaceModelData.load(data_dir / paths.FACE_MODEL)
        self.face = FaceModel(self.model).to(self.device)
        # Why an optional landmark backend was not used: said with every result.
        self.load_notes: list[str] = []
        self.detector = make_detector(data_dir / paths.LANDMARKER, self.settings.landmark_backend,
                                      notes=self.load_notes)
        self.load_seconds = time.perf_counter() - t
        self._lock = threading.Lock()
        self._tension = None
        self._warm_up()

    def _warm_up(self) -> None:
        """One tiny fit so the first real run does not pay torch's first-call costs."""
        from .fitting import FitSettings, fit_landmarks

        pts = np.zeros((478, 2), np.float32)
        data = self.model
        v = data.landmark_skin_points(data.neutral)
        pts[:] = 256 + v[:, :2] * np.array([8.0, -8.0])
        fit_landmarks(self.face, pts, "mediapipe478", np.zeros(53, np.float32), (512, 512),
                      FitSettings(iterations=2, rigid_iterations=2))

    def close(self) -> None:
        self.detector.close()

    def run(self, rgb: np.ndarray, progress: ProgressFn | None = None,
            cancel: threading.Event | None = None, source_path: str = "",
            notes: list[str] | None = None) -> FaceResult:
        from .fitting import FitSettings, fit_landmarks
        from .landmarks import scores_to_ict
        from .iris import iris_colour
        from .texture import extract_texture

        cancel = cancel or threading.Event()
        report_progress = progress or (lambda f, m: None)
        iterations, tex_size = QUALITY[self.settings.quality]
        seconds: dict[str, float] = {}
        notes = self.load_notes + list(notes or [])

        def check():
            if cancel.is_set():
                raise Cancelled()

        with self._lock:
            t0 = time.perf_counter()
            report_progress(0.02, "Finding the face")
            det = self.detector.detect(rgb)
            notes += det.notes
            seconds["detect"] = time.perf_counter() - t0
            check()

            t = time.perf_counter()
            exp0 = scores_to_ict(det.scores, det.score_names, self.model.exp_names)
            fit = fit_landmarks(
                self.face, det.points[:, :2], det.kind, exp0, rgb.shape[:2],
                FitSettings(iterations=iterations), cancel=cancel,
                progress=lambda f: report_progress(0.05 + 0.6 * f, "Fitting the face model"))
            seconds["fit"] = time.perf_counter() - t
            check()

            t = time.perf_counter()
            report_progress(0.7, "Projecting the photo texture")
            identity = fit.identity.astype(np.float32)
            neutral = self.model.neutral + np.tensordot(identity, self.model.id_basis, 1)
            posed = neutral + np.tensordot(fit.expression, self.model.exp_basis, 1)
            cam = (posed * np.array([10.0, -10.0, -10.0], np.float32)) @ fit.rotation.T + fit.translation
            texture, mask = extract_texture(rgb, cam, fit.intrinsics, self.model, size=tex_size,
                                            neck_occluders=self.settings.fill_neck_clothing)
            iris = iris_colour(rgb, det.points)     # empty without MediaPipe's iris points
            seconds["texture"] = time.perf_counter() - t
            check()

            detail = {}
            if self.settings.detail:
                from .detail import DetailSettings, compute_detail
                from .tension import ExpressionTension, model_edges

                t = time.perf_counter()
                report_progress(0.85, "Recovering fine detail")
                if self._tension is None:     # the shapes' edges, once per engine
                    self._tension = ExpressionTension(self.model.exp_basis, model_edges(self.model))
                maps = compute_detail(rgb, cam, fit.intrinsics, self.model, neutral, fit.expression,
                                      mask, DetailSettings(size=self.settings.detail_size,
                                                           device=self.device))
                detail = dict(detail_static=maps.static, detail_compressed=maps.compressed,
                              detail_stretched=maps.stretched,
                              expression_tension=self._tension(neutral))
                notes_detail = {k: v for k, v in maps.report.items() if k.endswith("_s")}
                seconds["detail"] = time.perf_counter() - t
                check()

            seconds["total"] = time.perf_counter() - t0
            report_progress(1.0, "Done")
            report = {
                "seconds": seconds,
                "device": str(self.device),
                "quality": self.settings.quality,
                "landmark_backend": det.kind,
                "notes": notes,
                "faces_found": int(det.n_faces),
                "fit": fit.errors,
                "peak_rss_mb": peak_rss_mb(),
                "iris_rgb": [round(float(x), 4) for x in iris] or None,
            }
            if detail:
                report["detail"] = {"metres_per_texel": maps.metres_per_texel,
                                    "lighting_sh": [float(x) for x in maps.lighting],
                                    # which light model the shading was divided by, and the
                                    # one-light fit (also when soft light fell back to SH)
                                    "light_model": maps.report.get("light_model"),
                                    "light": maps.report.get("light"), **notes_detail}
            if self.device.type == "cuda":
                import torch
                report["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            return FaceResult(
                identity=identity, expression=fit.expression.astype(np.float32),
                exp_names=self.model.exp_names, neutral_vertices=neutral.astype(np.float32),
                rotation=fit.rotation, translation=fit.translation, intrinsics=fit.intrinsics,
                image_size=np.array(rgb.shape[:2], np.int32), texture=texture, texture_mask=mask,
                landmarks_detected=det.points[:, :2].astype(np.float32),
                landmarks_fitted=fit.landmarks_fitted, arkit_scores=det.scores.astype(np.float32),
                arkit_names=np.asarray(det.score_names), source_path=str(source_path), report=report,
                iris_rgb=iris, **detail)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024.0
