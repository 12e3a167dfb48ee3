"""The reference policy: the smallest `Policy` over the streaming encoder, so that `toto-deploy` (its default
`policy: reference`), the tests and the benchmarks can drive the deployment loop. It is untrained unless
trained by hand; the behavior-cloning policies in policies/bc.py are the ones to deploy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from toto_robot.encoder import StreamingEncoder
from toto_robot.shapes import ROBOSUITE_PANDA, ShapeMeta


@dataclass
class ReferencePolicyConfig:
    # Defaults: the shape contract (toto_robot/shapes.py) with its first camera only.
    image_keys: list[str] = field(default_factory=lambda: list(ROBOSUITE_PANDA.cameras[:1]))
    state_keys: list[str] = field(default_factory=lambda: list(ROBOSUITE_PANDA.state_keys))
    state_dim: int = ROBOSUITE_PANDA.state_size  # sum of the state keys' sizes
    action_dim: int = ROBOSUITE_PANDA.action_dim
    horizon: int = 8  # actions per chunk
    hidden: int = 128

    def __post_init__(self) -> None:
        if not self.image_keys:
            raise ValueError("ReferencePolicyConfig.image_keys: expected at least one camera key, got none")
        for name in ("state_dim", "action_dim", "horizon", "hidden"):
            if getattr(self, name) < (0 if name == "state_dim" else 1):
                raise ValueError(f"ReferencePolicyConfig.{name}: expected a positive size, "
                                 f"got {getattr(self, name)}")

    @classmethod
    def from_shape_meta(cls, meta: ShapeMeta, **kw: Any) -> ReferencePolicyConfig:
        """The policy of a shape contract: every camera and state key of `meta`, its action size."""
        return cls(image_keys=list(meta.cameras), state_keys=list(meta.state_keys), state_dim=meta.state_size,
                   action_dim=meta.action_dim, **kw)


class ChunkHead(nn.Module):
    """Pooled features of every camera + state -> a chunk of actions in [-1, 1]: (B, D) -> (B, H, A)."""

    def __init__(self, in_dim: int, hidden: int, horizon: int, action_dim: int):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, horizon * action_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)).reshape(x.shape[0], self.horizon, self.action_dim)  # (B, H, A)


class ReferencePolicy(nn.Module):
    """The smallest policy of the Policy protocol over the streaming encoder: every camera's frame goes
    through the streaming encoder (cameras batched), the pooled features and the state feed an MLP chunk
    head (module docstring)."""

    def __init__(self, stream: StreamingEncoder, config: ReferencePolicyConfig):
        super().__init__()
        self.stream, self.config = stream, config
        self.encoder = stream.encoder  # registered as a submodule for .to() / state_dict()
        self.head = ChunkHead(len(config.image_keys) * stream.encoder.dim + config.state_dim, config.hidden,
                              config.horizon, config.action_dim)
        self._queue: list[np.ndarray] = []

    def reset(self) -> None:
        self.stream.reset()
        self._queue = []

    def _inputs(self, obs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in (*self.config.image_keys, *self.config.state_keys) if k not in obs]
        if missing:
            raise KeyError(f"observation: expected keys {missing} (policy config), found {sorted(obs)}")
        # (N, H, W, 3), one frame per camera
        frames = torch.stack([torch.as_tensor(np.asarray(obs[k])) for k in self.config.image_keys])
        state = [torch.as_tensor(np.asarray(obs[k], np.float32)).reshape(-1) for k in self.config.state_keys]
        state = torch.cat(state) if state else torch.zeros(0)
        if state.numel() != self.config.state_dim:
            raise ValueError(f"observation state: expected {self.config.state_dim} values from "
                             f"{self.config.state_keys}, found {state.numel()}")
        return frames, state

    @torch.no_grad()
    def observe(self, obs: Mapping[str, Any]) -> None:
        """Advance the streaming encoder by this frame without predicting (nothing to do for a one-frame
        window)."""
        if self.stream.window > 1:
            self.stream.step(self._inputs(obs)[0].to(self.encoder.device))

    @torch.no_grad()
    def predict_action_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        frames, state = self._inputs(obs)
        pooled = self.stream.step(frames.to(self.encoder.device)).pooled  # (N, C), one row per camera
        x = torch.cat([pooled.reshape(1, -1), state[None].to(pooled)], dim=1)  # (1, N*C + S)
        return self.head(x)[0].cpu().numpy()  # (H, A)

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        if not self._queue:
            self._queue = list(self.predict_action_chunk(obs))
        return self._queue.pop(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: image keys (B, H, W, 3) uint8, state keys (B, d), "action" (B, H, A) -> MSE of the chunk."""
        frames = torch.stack([batch[k] for k in self.config.image_keys], dim=1)  # (B, N, H, W, 3)
        b, n = frames.shape[:2]
        pooled = self.encoder(frames.reshape(b * n, 1, *frames.shape[2:])).pooled.reshape(b, -1)  # (B, N*C)
        state = [batch[k].float().reshape(b, -1) for k in self.config.state_keys]
        pred = self.head(torch.cat([pooled, *state], dim=1))
        loss = torch.nn.functional.mse_loss(pred, batch["action"].float())
        return loss, {"mse": float(loss)}
