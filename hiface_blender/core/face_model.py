"""The ICT face model as a torch module: bases held as registered buffers."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .model_data import FaceModelData


def choose_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. An explicit device that is missing is an error."""
    from .errors import HiFaceError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HiFaceError("CUDA was requested but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise HiFaceError("MPS was requested but is not available")
    return torch.device(name)


class FaceModel(nn.Module):
    """Linear ICT model: v = neutral + id_basis . identity + exp_basis . expression (cm)."""

    def __init__(self, data: FaceModelData) -> None:
        super().__init__()
        self.data = data
        self.register_buffer("neutral", torch.from_numpy(data.neutral))
        self.register_buffer("id_basis", torch.from_numpy(data.id_basis))
        self.register_buffer("exp_basis", torch.from_numpy(data.exp_basis))
        self.register_buffer("tris", torch.from_numpy(data.tris.astype(np.int64)))
        self._gaze_turns: dict = {}

    @property
    def n_identity(self) -> int:
        return int(self.id_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.exp_basis.shape[0])

    def forward(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """All vertices, (V, 3) cm, ICT axes."""
        return (self.neutral + torch.einsum("k,kvc->vc", identity, self.id_basis)
                + torch.einsum("k,kvc->vc", expression, self.exp_basis))

    def neutral_shape(self, identity: torch.Tensor) -> torch.Tensor:
        return self.neutral + torch.einsum("k,kvc->vc", identity, self.id_basis)

    def gaze_turn(self, eye, degrees: dict | None = None) -> "GazeTurn":
        """The eyeball turn for points on the given eyes (GazeTurn), made once per model: its
        sphere fits take about 50 ms, a photo fit's step a fraction of one."""
        # The device is in the key: a model moved with .to() after a turn was made must not get
        # the turn's buffers on the old device.
        key = (tuple(int(e) for e in eye), tuple(sorted((degrees or {}).items())),
               str(self.neutral.device))
        if key not in self._gaze_turns:
            self._gaze_turns[key] = GazeTurn(self.data, eye, degrees).to(self.neutral.device)
        return self._gaze_turns[key]

    def sparse(self, vertex_weights: torch.Tensor, vertex_ids: torch.Tensor) -> "SparseFace":
        """The model restricted to weighted sums of vertices (landmarks on triangles, say)."""
        w = vertex_weights.to(self.neutral)
        def gather(x):  # (..., V, 3) -> (..., P, 3)
            return (x[..., vertex_ids, :] * w[..., None]).sum(-2)
        return SparseFace(gather(self.neutral), gather(self.id_basis), gather(self.exp_basis))


class SparseFace(nn.Module):
    """A few points of the model (landmarks, contour candidates), cheap to evaluate per step."""

    def __init__(self, neutral, id_basis, exp_basis) -> None:
        super().__init__()
        self.register_buffer("neutral", neutral)
        self.register_buffer("id_basis", id_basis)
        self.register_buffer("exp_basis", exp_basis)

    def forward(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return (self.neutral + torch.einsum("k,kpc->pc", identity, self.id_basis)
                + torch.einsum("k,kpc->pc", expression, self.exp_basis))


class GazeTurn(nn.Module):
    """core.gaze's eyeball turn, in torch, for a few points on the eyeballs (the iris landmarks).

    `eye` gives each point's eyeball (0 left, 1 right, as core.gaze.EYE_PARTS). The eyeball
    centres are linear in the identity: each component's shift of the sphere-fit centre (within
    0.004 mm of the exact fit for identities ~N(0, 1)); expressions do not move the eyeballs.
    """

    def __init__(self, data: FaceModelData, eye, degrees: dict | None = None) -> None:
        super().__init__()
        from .gaze import GAZE_DEGREES, eye_angles, eye_centres

        neutral = data.neutral.astype(np.float64)
        c0 = eye_centres(neutral, data.vertex_part)
        c_id = np.stack([eye_centres(neutral + b, data.vertex_part) - c0
                         for b in data.id_basis.astype(np.float64)])
        # eye_angles is linear in the weights inside 0..1: its (E, 4) matrix, one column per
        # (eye, towards-left / up).
        names = [str(n) for n in data.exp_names]
        deg = {**GAZE_DEGREES, **(degrees or {})}
        gain = np.stack([eye_angles(row, names, deg).ravel() for row in np.eye(len(names))])
        self.register_buffer("centre", torch.from_numpy(c0.astype(np.float32)))
        self.register_buffer("centre_id", torch.from_numpy(c_id.astype(np.float32)))
        self.register_buffer("gain", torch.from_numpy(gain.astype(np.float32)))
        self.register_buffer("eye", torch.as_tensor(np.asarray(eye, np.int64)))

    def centres(self, identity: torch.Tensor) -> torch.Tensor:
        """(2, 3) cm, ICT axes."""
        return self.centre + torch.einsum("k,kec->ec", identity, self.centre_id)

    def rotations(self, expression: torch.Tensor) -> torch.Tensor:
        """(B, 2, 3, 3) per eye, from (B, E) weights: up/down first, then sideways."""
        a = (expression @ self.gain).reshape(-1, 2, 2)
        cy, sy, cp, sp = torch.cos(a[..., 0]), torch.sin(a[..., 0]), torch.cos(a[..., 1]), torch.sin(a[..., 1])
        z, o = torch.zeros_like(cy), torch.ones_like(cy)
        yaw = torch.stack([cy, z, sy, z, o, z, -sy, z, cy], -1).reshape(*cy.shape, 3, 3)
        pitch = torch.stack([o, z, z, z, cp, sp, z, -sp, cp], -1).reshape(*cy.shape, 3, 3)
        return yaw @ pitch

    def forward(self, points: torch.Tensor, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """points (B, P, 3) cm, ICT axes, one per `eye` entry; expression (B, E)."""
        c = self.centres(identity)[self.eye]                        # (P, 3)
        rot = self.rotations(expression)[:, self.eye]               # (B, P, 3, 3)
        return torch.einsum("bpij,bpj->bpi", rot, points - c) + c

    def turn_rows(self, points: torch.Tensor, rows: torch.Tensor, identity: torch.Tensor,
                  expression: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) points with the given rows (one per `eye` entry) turned, the rest as given."""
        return points.index_copy(1, rows, self(points[:, rows], identity, expression))
