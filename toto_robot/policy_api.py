"""The interface every policy offers (LeRobot's PreTrainedPolicy shape), so that the rollout runner and
the deployment loop can drive any of them without importing `policies/`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: the deployment loop imports this module and needs no torch
    import torch


@runtime_checkable
class Policy(Protocol):
    def reset(self) -> None:
        """Forget temporal state (streaming encoder cache, action queue) at an episode start."""

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """One observation (unbatched: images (H, W, 3) uint8, proprio float32) -> one action (A,)
        in the environment's normalized action space."""

    def predict_action_chunk(self, obs: dict[str, Any]) -> np.ndarray:
        """One observation -> the next H actions (H, A), without consuming any action queue."""

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training: a batch from the sampler -> (loss, metrics)."""


@runtime_checkable
class ObservingPolicy(Policy, Protocol):
    """A policy with temporal state (a streaming encoder) that also takes frames it does not act on."""

    def observe(self, obs: dict[str, Any]) -> None:
        """Advance the temporal state by one observation without predicting. The deployment loop feeds
        every frame it does not hand to `predict_action_chunk`, so the state sees the frame rate training saw."""
