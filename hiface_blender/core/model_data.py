"""The converted face model: plain numpy arrays in one uncompressed .npz (no pickle).

Produced once at build time by `convert.convert_ict` from the ICT-FaceKit OBJs, loaded in well
under a second. ICT units and axes: centimetres, Y up, the face looks along +Z.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1

# ICT vertex ranges (inclusive start, exclusive stop), from the ICT-FaceKit README.
PARTS = (
    ("face", 0, 9409),
    ("head_neck", 9409, 11248),
    ("mouth_socket", 11248, 13294),
    ("eye_socket_l", 13294, 13678),
    ("eye_socket_r", 13678, 14062),
    ("gums_tongue", 14062, 17039),
    ("teeth", 17039, 21451),
    ("eyeball_l", 21451, 23021),
    ("eyeball_r", 23021, 24591),
    ("lacrimal_l", 24591, 24795),
    ("lacrimal_r", 24795, 24999),
    ("eye_blend_l", 24999, 25023),
    ("eye_blend_r", 25023, 25047),
    ("eye_occlusion_l", 25047, 25199),
    ("eye_occlusion_r", 25199, 25351),
    ("eyelashes_l", 25351, 26035),
    ("eyelashes_r", 26035, 26719),
)
NARROW_FACE_STOP = 6706
# Iris sub-ranges inside the eyeballs.
IRIS_L = (22221, 23021)
IRIS_R = (23791, 24591)


@dataclass
class FaceModelData:
    neutral: np.ndarray          # (V, 3) float32, cm
    id_basis: np.ndarray         # (K_id, V, 3) float32 offsets, unit-variance modes
    exp_basis: np.ndarray        # (K_exp, V, 3) float32 offsets
    exp_names: np.ndarray        # (K_exp,) str, ICT spelling (mouthSmile_L)
    uvs: np.ndarray              # (U, 2) float32
    loop_vert: np.ndarray        # (L,) int32: polygon corners, vertex index
    loop_uv: np.ndarray          # (L,) int32: polygon corners, uv index
    poly_start: np.ndarray       # (P,) int32
    poly_size: np.ndarray        # (P,) int32 (3 or 4)
    poly_material: np.ndarray    # (P,) int32 index into material_names
    material_names: np.ndarray   # (M,) str (M_Face, M_Teeth, ...)
    tris: np.ndarray             # (T, 3) int32 vertex indices, fan-triangulated polygons
    tri_uv: np.ndarray           # (T, 3) int32 uv indices
    tri_poly: np.ndarray         # (T,) int32 source polygon
    vertex_part: np.ndarray      # (V,) int8 index into PARTS
    mirror: np.ndarray           # (V,) int32 vertex on the other side (x -> -x)
    landmarks68: np.ndarray      # (68,) int32 Multi-PIE indices from the ICT README
    mp_tri: np.ndarray           # (478,) int32 triangle holding each MediaPipe landmark
    mp_bary: np.ndarray          # (478, 3) float32 barycentric coordinates in that triangle
    mp_offset: np.ndarray        # (478, 3) float32 landmark minus its surface point, cm, head frame
    contour_mp: np.ndarray       # (C,) int32 MediaPipe face-oval landmark ids
    contour_candidates: np.ndarray  # (C, N) int32 ICT vertices each oval point may slide to
    version: np.ndarray          # () int
    # The detector's error model (landmark_noise.py): covered landmark ids (P,), low-rank
    # covariance factor (r, 2P) and diagonal (2P,), cm in the face frame. Empty: not learned.
    mp_noise_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mp_noise_basis: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    mp_noise_diag: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def n_vertices(self) -> int:
        return int(self.neutral.shape[0])

    def landmark_skin_points(self, vertices: np.ndarray, ids=None) -> np.ndarray:
        """MediaPipe landmarks `ids` (all when None) on the surface of `vertices` (V, 3), each at
        its barycentric spot, without its offset from the skin (mp_offset)."""
        ids = np.arange(len(self.mp_tri)) if ids is None else np.asarray(ids)
        return (vertices[self.tris[self.mp_tri[ids]]] * self.mp_bary[ids][:, :, None]).sum(1)

    def part_mask(self, *names: str) -> np.ndarray:
        ids = [i for i, p in enumerate(PARTS) if p[0] in names]
        return np.isin(self.vertex_part, ids)

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> "FaceModelData":
        with np.load(path, allow_pickle=False) as z:
            data = {f.name: z[f.name] for f in fields(cls) if f.name in z.files}
        if int(data["version"]) != FORMAT_VERSION:
            raise ValueError(f"face model file {path} has format {int(data['version'])}, "
                             f"expected {FORMAT_VERSION}: run `python3 build.py` again")
        return cls(**data)
