"""A policy that samples uniform actions: the floor every learned policy must clear."""

from __future__ import annotations

import numpy as np

from envs.robosuite_env import ACTION_DIM


class RandomPolicy:
    def __init__(self, action_dim: int = ACTION_DIM, seed: int = 0):
        if action_dim < 1:
            raise ValueError(f"action_dim: must be >= 1, got {action_dim}")
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
