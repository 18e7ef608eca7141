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
