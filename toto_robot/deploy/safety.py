"""The safety filter: every action is clipped to [action_low, action_high] and to max_delta away from the
previous action, and "hold" is the action that keeps the robot where it is: zero deltas (`hold="zero"`,
keeping `hold_keep` dims such as the gripper from the last action) for velocity or delta controllers, the last
action again (`hold="last"`) for absolute position targets, or nothing (`hold="skip"`). When the loop holds
or stops is decided in toto_robot/deploy/loop.py; each intervention sets a bit of `INTERVENTION_BITS`."""

from __future__ import annotations

import numpy as np

from toto_robot.deploy.config import SafetyConfig

# Per-step intervention bits (the `intervention` key of a logged episode).
INTERVENTION_BITS = {
    "clip_limit": 1,  # an action component was outside [action_low, action_high]
    "clip_delta": 2,  # an action component moved more than max_delta from the previous action
    "hold_stale": 4,  # the observation was older than max_obs_age_s (or the camera timed out)
    "hold_invalid": 8,  # the observation had a non-finite value
    "hold_no_action": 16,  # no planned action for this tick
}


class SafetyFilter:
    """Clips actions to limits and to a maximum change per tick; builds hold actions."""

    def __init__(self, config: SafetyConfig, action_dim: int):
        self.config, self.action_dim = config, action_dim
        self.low = self._per_dim("action_low", config.action_low)
        self.high = self._per_dim("action_high", config.action_high)
        self.max_delta = None if config.max_delta is None else self._per_dim("max_delta", config.max_delta)
        bad = [i for i in config.hold_keep if not 0 <= i < action_dim]
        if bad:
            raise ValueError(f"SafetyConfig.hold_keep: expected dims in [0, {action_dim}), got {bad}")

    def _per_dim(self, name: str, value) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(value, np.float32), (self.action_dim,)) if np.ndim(value) == 0 \
            else np.asarray(value, np.float32)
        if arr.shape != (self.action_dim,):
            raise ValueError(f"SafetyConfig.{name}: expected a scalar or {self.action_dim} values "
                             f"(the action size), got {len(arr)}")
        return arr

    def __call__(self, action: np.ndarray, last: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
        """action (A,) finite -> (safe action, names of the limits that changed it)."""
        kinds = []
        out = np.clip(action, self.low, self.high)
        if not np.array_equal(out, action):
            kinds.append("clip_limit")
        if self.max_delta is not None and last is not None:
            limited = np.clip(out, last - self.max_delta, last + self.max_delta)
            if not np.array_equal(limited, out):
                kinds.append("clip_delta")
            out = limited
        return out.astype(np.float32), kinds

    def hold(self, last: np.ndarray | None) -> np.ndarray | None:
        """The action that holds position (None: send nothing)."""
        mode = self.config.hold
        if mode == "skip" or (mode == "last" and last is None):
            return None
        if mode == "last":
            return last.copy()
        out = np.zeros(self.action_dim, np.float32)
        if last is not None and self.config.hold_keep:
            out[self.config.hold_keep] = last[self.config.hold_keep]
        return out
