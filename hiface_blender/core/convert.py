"""Build-time conversion of the upstream assets into the package's face-model file.

Reads the ICT-FaceKit OBJs straight from the upstream zip, and the canonical face geometry from
the MediaPipe `.task` bundle, and writes one `FaceModelData` .npz (see model_data.py).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .assets import ICT_COMMIT
from .model_data import FORMAT_VERSION, PARTS, FaceModelData

ICT_PREFIX = f"ICT-FaceKit-{ICT_COMMIT}/FaceXModel/"
N_IDENTITY = 100

# Multi-PIE 68 landmark vertices, from the ICT-FaceKit README.
ICT_LANDMARKS68 = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088,
    3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140,
    2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732,
    5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216,
    6207, 6470, 5517, 5966,
)


def _obj_vertices(text: str) -> np.ndarray:
    rows = [line[2:] for line in text.splitlines() if line.startswith("v ")]
    return np.array(" ".join(rows).split(), dtype=np.float64).reshape(-1, 3)


def _obj_topology(text: str):
    uvs, loop_v, loop_uv, start, size, mat = [], [], [], [], [], []
    materials: list[str] = []
    current = -1
    for line in text.splitlines():
        if line.startswith("vt "):
            uvs.append(line[3:])
        elif line.startswith("f "):
            corners = line[2:].split()
            start.append(len(loop_v))
            size.append(len(corners))
            mat.append(current)
            for c in corners:
                v, t = c.split("/")[:2]
                loop_v.append(int(v) - 1)
                loop_uv.append(int(t) - 1)
        elif line.startswith("usemtl "):
            name = line[7:].strip()
            if name not in materials:
                materials.append(name)
            current = materials.index(name)
    uv = np.array(" ".join(uvs).split(), dtype=np.float32).reshape(-1, 2)
    return (uv, np.array(loop_v, np.int32), np.array(loop_uv, np.int32), np.array(start, np.int32),
            np.array(size, np.int32), np.array(mat, np.int32), np.array(materials))


def _triangulate(loop_v, loop_uv, start, size):
    tris, tri_uv, tri_poly = [], [], []
    for k in range(1, int(size.max()) - 1):
        sel = np.nonzero(size > k + 1)[0]
        s = start[sel]
        tris.append(np.stack([loop_v[s], loop_v[s + k], loop_v[s + k + 1]], 1))
        tri_uv.append(np.stack([loop_uv[s], loop_uv[s + k], loop_uv[s + k + 1]], 1))
        tri_poly.append(sel)
    tri_poly = np.concatenate(tri_poly)
    order = np.argsort(tri_poly, kind="stable")
    return (np.concatenate(tris)[order].astype(np.int32), np.concatenate(tri_uv)[order].astype(np.int32),
            tri_poly[order].astype(np.int32))


def mirror_map(neutral: np.ndarray, vertex_part: np.ndarray) -> np.ndarray:
    """For each vertex, the nearest vertex to its x-mirrored position in the mirrored part."""
    from scipy.spatial import cKDTree  # build-time only

    names = [p[0] for p in PARTS]
    out = np.arange(len(neutral), dtype=np.int32)
    for i, name in enumerate(names):
        other = name[:-1] + {"l": "r", "r": "l"}[name[-1]] if name[-2:] in ("_l", "_r") else name
        src = np.nonzero(vertex_part == i)[0]
        dst = np.nonzero(vertex_part == names.index(other))[0]
        q = neutral[src] * np.array([-1.0, 1.0, 1.0])
        _, j = cKDTree(neutral[dst]).query(q)
        out[src] = dst[j]
    return out


def load_ict(zip_path: Path) -> dict:
    """Parse the ICT OBJs into arrays (no correspondence yet)."""
    with zipfile.ZipFile(zip_path) as z:
        config = json.loads(z.read(ICT_PREFIX + "vertex_indices.json"))
        neutral_text = z.read(ICT_PREFIX + "generic_neutral_mesh.obj").decode()
        neutral = _obj_vertices(neutral_text)
        ident = np.stack([_obj_vertices(z.read(ICT_PREFIX + f"identity{i:03d}.obj").decode()) - neutral
                          for i in range(N_IDENTITY)])
        names = list(config["expressions"])
        expr = np.stack([_obj_vertices(z.read(ICT_PREFIX + f"{n}.obj").decode()) - neutral for n in names])
    uv, loop_v, loop_uv, start, size, mat, materials = _obj_topology(neutral_text)
    tris, tri_uv, tri_poly = _triangulate(loop_v, loop_uv, start, size)
    vertex_part = np.zeros(len(neutral), np.int8)
    for i, (_, a, b) in enumerate(PARTS):
        vertex_part[a:b] = i
    return dict(
        neutral=neutral.astype(np.float32), id_basis=ident.astype(np.float32),
        exp_basis=expr.astype(np.float32), exp_names=np.array(names), uvs=uv, loop_vert=loop_v,
        loop_uv=loop_uv, poly_start=start, poly_size=size, poly_material=mat,
        material_names=materials, tris=tris, tri_uv=tri_uv, tri_poly=tri_poly,
        vertex_part=vertex_part, mirror=mirror_map(neutral, vertex_part),
        landmarks68=np.array(ICT_LANDMARKS68, np.int32),
    )


# --- MediaPipe canonical face geometry (protobuf wire format, parsed without generated code) ---

def _varint(b: bytes, i: int):
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b: bytes):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, t = key >> 3, key & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif t == 5:
            v, i = b[i:i + 4], i + 4
        elif t == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {t}")
        yield f, t, v


def canonical_face(task_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's canonical face mesh: (468, 3) vertices in cm and (F, 3) triangles."""
    with zipfile.ZipFile(task_path) as z:
        meta = z.read("geometry_pipeline_metadata_landmarks.binarypb")
    mesh = next(v for f, t, v in _fields(meta) if f == 1)
    floats, idx = [], []
    for f, t, v in _fields(mesh):
        if f == 3:
            floats.append(np.frombuffer(v, "<f4") if t == 2 else np.frombuffer(v, "<f4", 1))
        elif f == 4:
            if t == 0:
                idx.append(v)
            else:  # packed
                j = 0
                while j < len(v):
                    x, j = _varint(v, j)
                    idx.append(x)
    vb = np.concatenate(floats).reshape(-1, 5)  # x y z u v
    return vb[:, :3].astype(np.float64), np.array(idx, np.int64).reshape(-1, 3)


def convert_ict(zip_path: Path, task_path: Path, out_path: Path, log=print,
                calibrate_landmarks: bool = True) -> FaceModelData:
    from .correspondence import register_mediapipe

    log("reading ICT-FaceKit OBJs")
    arrays = load_ict(zip_path)
    log("registering MediaPipe's canonical face to the ICT surface")
    canon_v, canon_f = canonical_face(task_path)
    arrays.update(register_mediapipe(arrays, canon_v, canon_f, log=log))
    data = FaceModelData(**arrays, version=np.array(FORMAT_VERSION))
    if calibrate_landmarks:
        from .calibrate import calibrate

        log("calibrating the landmark positions on synthetic renders")
        data = calibrate(data, task_path, log=log)
    tmp = out_path.with_suffix(".tmp.npz")
    data.save(tmp)
    tmp.replace(out_path)
    return data
