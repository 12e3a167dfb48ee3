"""What the deployment loop is configured with (`LoopConfig`, `SafetyConfig`) and what it talks to: a robot of
the `ControlRobot` shape, which returns `TimedObservation`s and takes action vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from toto_robot.typecheck import check_types

CHUNK_RULES = ("switch", "blend")
HOLD_MODES = ("zero", "last", "skip")


@dataclass
class LoopConfig:
    rate_hz: float = 10.0  # control rate: one action per tick
    n_steps: int = 100  # ticks per episode
    chunk_rule: str = "switch"  # "switch": a new chunk replaces the plan; "blend": cross-fade into it
    blend_steps: int = 4  # "blend": ticks over which the new chunk's weight ramps up to 1
    infer_every: int = 1  # hand every n-th observation to the inference worker
    observe_backlog: int = 4  # frames a stateful policy may still have to `observe`; older ones go unseen
    max_obs_age_s: float = 0.2  # an observation older than this when the action is chosen -> hold
    max_hold_s: float = 1.0  # holding (for any reason) longer than this -> safe stop

    def __post_init__(self) -> None:
        check_types(self)
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"LoopConfig.rate_hz: expected a rate in (0, 1000] Hz, got {self.rate_hz}")
        for name in ("n_steps", "blend_steps", "infer_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.observe_backlog < 0:
            raise ValueError(f"LoopConfig.observe_backlog: expected an integer >= 0, "
                             f"got {self.observe_backlog}")
        if self.chunk_rule not in CHUNK_RULES:
            raise ValueError(f"LoopConfig.chunk_rule: expected one of {CHUNK_RULES}, got {self.chunk_rule!r}")
        for name in ("max_obs_age_s", "max_hold_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoopConfig.{name}: expected seconds > 0, got {getattr(self, name)}")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class SafetyConfig:
    action_low: float | list[float] = -1.0  # per-dimension lower limit (a scalar applies to every dimension)
    action_high: float | list[float] = 1.0
    max_delta: float | list[float] | None = 0.5  # largest change of any dimension from one tick to the next
    hold: str = "zero"  # "zero" | "last" | "skip": what holding position sends (toto_robot/deploy/safety.py)
    hold_keep: list[int] = field(default_factory=list)  # "zero": dims copied from the last action (gripper)

    def __post_init__(self) -> None:
        check_types(self)
        if self.hold not in HOLD_MODES:
            raise ValueError(f"SafetyConfig.hold: expected one of {HOLD_MODES}, got {self.hold!r}")
        low, high = np.asarray(self.action_low, np.float64), np.asarray(self.action_high, np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise ValueError(f"SafetyConfig: expected finite action_low <= action_high, "
                             f"got {self.action_low} and {self.action_high}")
        if self.max_delta is not None and not np.all(np.asarray(self.max_delta, np.float64) > 0):
            raise ValueError(f"SafetyConfig.max_delta: expected positive values or null, "
                             f"got {self.max_delta}")
        self.hold_keep = [int(i) for i in self.hold_keep]


@dataclass
class TimedObservation:
    data: dict[str, np.ndarray]  # keyed as the policy expects: images (H, W, 3) uint8, state float32
    t_capture: float  # time.perf_counter() when the oldest part of it was captured


class ControlRobot(Protocol):
    """What the loop needs from a robot. Errors: TimeoutError when a camera has no recent frame (the loop
    holds), ConnectionError when the robot or a camera is gone (the loop ends the episode)."""

    action_dim: int

    def get_observation(self) -> TimedObservation: ...

    def send_action(self, action: np.ndarray) -> None: ...
