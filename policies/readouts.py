"""Read-outs: a camera's token features (B, N, C) -> one vector (B, out_dim) for a policy head.

The frozen encoder's tokens carry *what* is where only implicitly (the transformer sees raster order through
rotary embeddings, but its output tokens hold no absolute position a pooler can read), so each read-out can
add a learned per-token position embedding first (`position_embedding=True`):
- `mean`: average over tokens (the paper's weaker baseline);
- `attentive`: one learned query cross-attends over the tokens (the paper's attentive probe);
- `multiquery`: several learned queries, their outputs concatenated (keeps several places apart);
- `spatial_softmax`: keypoints as in robomimic's visual policies: a 1x1 projection to K maps, a softmax over
  the token grid per map, and the expected (x, y) of each, so the read-out is positions by construction;
- `flatten`: every token's features, each projected to a few channels, concatenated in raster order (the
  probe's `flat` read-out, which holds the object's position best: toto-probe-state).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from toto_robot.encoder import AttentivePooler

READOUTS = ("mean", "attentive", "multiquery", "spatial_softmax", "flatten")


class MultiQueryPooler(nn.Module):
    """K learned queries cross-attend over the tokens: (B, N, C) -> (B, K * C)."""

    def __init__(self, dim: int, n_queries: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            num_heads = 1
        self.query = nn.Parameter(torch.randn(1, n_queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        y, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)  # (B, K, C)
        return self.out_norm(y).flatten(1)  # (B, K * C)


class SpatialSoftmax(nn.Module):
    """Token grid (B, h*w, C) in raster order -> expected (x, y) of K softmax maps, (B, 2K), in [-1, 1]."""

    def __init__(self, dim: int, n_tokens: int, n_keypoints: int):
        super().__init__()
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"spatial_softmax: expected a square token grid, got {n_tokens} tokens")
        self.proj = nn.Linear(dim, n_keypoints)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        coords = torch.linspace(-1, 1, side)
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], -1), persistent=False)  # (N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(x) / self.log_temperature.exp()  # (B, N, K)
        weights = logits.softmax(dim=1)  # a distribution over the grid per keypoint
        keypoints = torch.einsum("bnk,nd->bkd", weights, self.grid)  # (B, K, 2)
        return keypoints.flatten(1)  # (B, 2K)


class FlattenTokens(nn.Module):
    """(B, N, C) -> (B, N * k): a shared linear map of each token to k channels, kept in raster order."""

    def __init__(self, dim: int, n_tokens: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, channels)
        self.out_dim = n_tokens * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x)).flatten(1)  # (B, N * k)


class Readout(nn.Module):
    """(B, N, C) token features -> (B, out_dim), optionally with a learned position embedding first."""

    def __init__(self, kind: str, dim: int, n_tokens: int, position_embedding: bool = False, n_queries: int = 4,
                 n_keypoints: int = 32, flatten_channels: int = 16):
        super().__init__()
        if kind not in READOUTS:
            raise ValueError(f"readout: expected one of {READOUTS}, got {kind!r}")
        self.kind = kind
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02) if position_embedding else None
        if kind == "mean":
            self.pool, self.out_dim = None, dim
        elif kind == "attentive":
            self.pool, self.out_dim = AttentivePooler(dim), dim
        elif kind == "multiquery":
            self.pool, self.out_dim = MultiQueryPooler(dim, n_queries), n_queries * dim
        elif kind == "spatial_softmax":
            self.pool, self.out_dim = SpatialSoftmax(dim, n_tokens, n_keypoints), 2 * n_keypoints
        else:
            self.pool = FlattenTokens(dim, n_tokens, flatten_channels)
            self.out_dim = self.pool.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            if x.shape[1] != self.pos.shape[1]:
                raise ValueError(f"readout: expected {self.pos.shape[1]} tokens per frame, got {x.shape[1]}")
            x = x + self.pos
        return x.mean(dim=1) if self.pool is None else self.pool(x)
