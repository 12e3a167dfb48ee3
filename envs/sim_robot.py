"""A LeRobot `Robot` backed by our robosuite environments, and a fault-injecting wrapper for any `Robot`.

`SimRobot` speaks LeRobot's robot API exactly as a real arm does (`connect`, `get_observation`,
`send_action`, `disconnect`, flat feature dicts), so dry runs and tests exercise the same adapter and control
loop as hardware:
    observation: "<camera>" (S, S, 3) uint8 and "<camera>.timestamp" (capture time, time.perf_counter()) per
                 camera; one float per state value: "eef_pos.x", ..., "eef_quat.w", "gripper_qpos.left", ...
    action:      "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper" (robosuite's normalized OSC action)
One `send_action` advances the simulation by one control step (1 / control_freq s of simulated time);
between actions simulated time stands still, so an observation is current whenever it is read.

`FaultyRobot(robot, FaultConfig(...))` wraps any `Robot` and injects, by observation index (deterministic,
for tests) or at random rates (seeded, for soak runs): camera stalls (the frame and its timestamp freeze; past
`camera_timeout_s` reading raises TimeoutError as LeRobot's cameras do), dropped frames (the previous frame
again), latency spikes (get_observation returns late, its data as old as the delay), NaN state readings and a
disconnect (every later call raises DeviceNotConnectedError).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lerobot.robots import Robot, RobotConfig
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

from envs.robosuite_env import RobosuiteEnv
from toto_robot.shapes import ROBOSUITE_PANDA
from toto_robot.typecheck import check_types

SIM_ROBOT_TYPE = "toto_sim"
# LeRobot-style scalar feature names of the contract's action and state keys (toto_robot/shapes.py), in order.
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
_STATE_COMPONENTS = {"robot0_eef_pos": ("x", "y", "z"), "robot0_eef_quat": ("x", "y", "z", "w"),
                     "robot0_gripper_qpos": ("left", "right")}
# robosuite observation key -> feature names, e.g. "robot0_eef_pos" -> ("eef_pos.x", "eef_pos.y", "eef_pos.z")
STATE_NAMES = {key: tuple(f"{key.removeprefix('robot0_')}.{c}" for c in _STATE_COMPONENTS[key])
               for key in ROBOSUITE_PANDA.state_keys}
if len(ACTION_NAMES) != ROBOSUITE_PANDA.action_dim or any(
        len(names) != ROBOSUITE_PANDA.state[key] for key, names in STATE_NAMES.items()):
    raise RuntimeError(f"sim robot features {STATE_NAMES}, {ACTION_NAMES} do not match the contract's state "
                       f"{ROBOSUITE_PANDA.state} and action size {ROBOSUITE_PANDA.action_dim}")
TIMESTAMP_SUFFIX = ".timestamp"


@RobotConfig.register_subclass(SIM_ROBOT_TYPE)
@dataclass
class SimRobotConfig(RobotConfig):
    task: str = "Lift"
    camera_names: list[str] = field(default_factory=lambda: ["agentview"])  # robosuite cameras; [] for none
    image_size: int = ROBOSUITE_PANDA.image_size
    control_freq: int = 20  # Hz of simulated time per action
    horizon: int | None = None  # None: the task's default
    seed: int = 0  # seed of the first episode; reset(seed) starts another


class SimRobot(Robot):
    config_class = SimRobotConfig
    name = SIM_ROBOT_TYPE

    def __init__(self, config: SimRobotConfig):
        # Robot.__init__ only sets up calibration files (and creates their directory under the HF cache); a
        # simulated arm has nothing to calibrate, so the attributes it sets are set here instead.
        self.config = config
        self.robot_type, self.id = self.name, config.id
        self.calibration_dir, self.calibration = config.calibration_dir, {}
        self.cameras = tuple(config.camera_names)
        self.env: RobosuiteEnv | None = None
        self._obs: dict[str, np.ndarray] = {}
        self.success = False

    @property
    def observation_features(self) -> dict[str, Any]:
        size = self.config.image_size
        features: dict[str, Any] = {}
        for cam in self.cameras:
            features[cam] = (size, size, 3)
            features[cam + TIMESTAMP_SUFFIX] = float
        for names in STATE_NAMES.values():
            features.update(dict.fromkeys(names, float))
        return features

    @property
    def action_features(self) -> dict[str, type]:
        return dict.fromkeys(ACTION_NAMES, float)

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        """Nothing to calibrate in simulation."""

    def configure(self) -> None:
        """Nothing to configure in simulation."""

    def connect(self, calibrate: bool = True) -> None:
        if self.env is not None:
            raise DeviceAlreadyConnectedError(f"{self} is already connected")
        cfg = self.config
        self.env = RobosuiteEnv(task=cfg.task, cameras=self.cameras, image_size=cfg.image_size,
                                control_freq=cfg.control_freq, horizon=cfg.horizon)
        self.reset(cfg.seed)

    def reset(self, seed: int) -> None:
        """Start a new episode from `seed` (beyond LeRobot's API: a real scene is reset by hand)."""
        self._require_connected()
        self._obs, _ = self.env.reset(seed=seed)
        self.success = False

    def get_observation(self) -> dict[str, Any]:
        self._require_connected()
        now = time.perf_counter()
        out: dict[str, Any] = {}
        for cam in self.cameras:
            out[cam] = self._obs[f"{cam}_image"]
            out[cam + TIMESTAMP_SUFFIX] = now
        for key, names in STATE_NAMES.items():
            out.update(zip(names, self._obs[key].tolist(), strict=True))
        return out

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._require_connected()
        missing = [k for k in ACTION_NAMES if k not in action]
        if missing:
            raise KeyError(f"action: expected keys {list(ACTION_NAMES)}, missing {missing}")
        vector = np.clip(np.array([action[k] for k in ACTION_NAMES], np.float32), -1.0, 1.0)
        self._obs, _, _, _, info = self.env.step(vector)
        self.success = self.success or bool(info["success"])
        return dict(zip(ACTION_NAMES, vector.tolist(), strict=True))

    def disconnect(self) -> None:
        if self.env is None:
            raise DeviceNotConnectedError(f"{self} is not connected")
        self.env.close()
        self.env = None

    def _require_connected(self) -> None:
        if self.env is None:
            raise DeviceNotConnectedError(f"{self} is not connected: call connect() first")


# -- faults --------------------------------------------------------------------------------------------------


@dataclass
class FaultConfig:
    """Faults by observation index i (0 = the first get_observation after connect) and at random rates."""

    camera_stall: list[list[int]] = field(default_factory=list)  # [start, stop) ranges: frames freeze
    dropped_frames: list[int] = field(default_factory=list)  # indices returning the previous frame again
    latency_spike: list[list[float]] = field(default_factory=list)  # [index, seconds]: returns that late
    nan_state: list[list[int]] = field(default_factory=list)  # [start, stop) ranges: state values are NaN
    disconnect_at: int | None = None  # from this index on, every call raises DeviceNotConnectedError
    drop_prob: float = 0.0  # random faults per observation, seeded
    spike_prob: float = 0.0
    spike_s: float = 0.2
    nan_prob: float = 0.0
    seed: int = 0
    camera_timeout_s: float = 0.5  # a frame older than this raises TimeoutError (LeRobot cameras' max_age_ms)

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("camera_stall", "nan_state"):
            for r in getattr(self, name):
                if len(r) != 2 or not 0 <= r[0] < r[1]:
                    raise ValueError(f"FaultConfig.{name}: expected [start, stop) ranges with 0 <= start < stop, "
                                     f"got {r}")
        for s in self.latency_spike:
            if len(s) != 2 or s[0] < 0 or s[1] <= 0:
                raise ValueError(f"FaultConfig.latency_spike: expected [index, seconds > 0] pairs, got {s}")
        for name in ("drop_prob", "spike_prob", "nan_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")


class FaultyRobot(Robot):
    """Wraps a `Robot` and injects the faults of a `FaultConfig`; every injected fault is appended to `log`."""

    def __init__(self, robot: Robot, faults: FaultConfig):
        # No Robot.__init__: the wrapped robot owns its calibration; this object only forwards to it.
        self.robot, self.faults = robot, faults
        self.robot_type, self.id, self.name = robot.robot_type, robot.id, f"faulty_{robot.name}"
        self.calibration_dir, self.calibration = robot.calibration_dir, robot.calibration
        self.log: list[tuple[int, str]] = []
        self._rng = np.random.default_rng(faults.seed)
        self._index = 0
        self._disconnected = False
        self._last: dict[str, Any] | None = None  # previous observation (for dropped frames and stalls)
        self._frozen: dict[str, Any] | None = None  # camera values frozen by a stall
        self._spikes = {int(i): float(s) for i, s in faults.latency_spike}

    @property
    def observation_features(self) -> dict:
        return self.robot.observation_features

    @property
    def action_features(self) -> dict:
        return self.robot.action_features

    @property
    def is_connected(self) -> bool:
        return not self._disconnected and self.robot.is_connected

    @property
    def is_calibrated(self) -> bool:
        return self.robot.is_calibrated

    def calibrate(self) -> None:
        self.robot.calibrate()

    def configure(self) -> None:
        self.robot.configure()

    def connect(self, calibrate: bool = True) -> None:
        self.robot.connect(calibrate)
        self._index, self._disconnected, self._last, self._frozen = 0, False, None, None

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def reset(self, seed: int) -> None:
        self._check_link()
        self.robot.reset(seed)

    @property
    def success(self) -> bool | None:
        return getattr(self.robot, "success", None)

    def _camera_keys(self) -> list[str]:
        shapes = self.robot.observation_features
        return [k for k, v in shapes.items() if isinstance(v, tuple) and len(v) == 3]

    def _check_link(self) -> None:
        if self._disconnected:
            raise DeviceNotConnectedError(f"{self.robot} disconnected (injected fault)")

    def get_observation(self) -> dict[str, Any]:
        i, f = self._index, self.faults
        self._index += 1
        if f.disconnect_at is not None and i >= f.disconnect_at:
            if not self._disconnected:
                self.log.append((i, "disconnect"))
            self._disconnected = True
        self._check_link()
        obs = dict(self.robot.get_observation())
        cams = self._camera_keys()
        camera_part = [k for k in obs if any(k == c or k == c + TIMESTAMP_SUFFIX for c in cams)]
        stalled = any(a <= i < b for a, b in f.camera_stall)
        if stalled:
            if self._frozen is None:
                self._frozen = {k: (self._last or obs)[k] for k in camera_part}
            self.log.append((i, "camera_stall"))
            obs.update(self._frozen)
            stamps = [obs[c + TIMESTAMP_SUFFIX] for c in cams if c + TIMESTAMP_SUFFIX in obs]
            if stamps and time.perf_counter() - min(stamps) > f.camera_timeout_s:
                raise TimeoutError(f"camera frame is {time.perf_counter() - min(stamps):.2f} s old "
                                   f"(max allowed {f.camera_timeout_s} s; injected stall)")
        else:
            self._frozen = None
            if (i in f.dropped_frames or self._rng.random() < f.drop_prob) and self._last is not None:
                self.log.append((i, "dropped_frame"))
                obs.update({k: self._last[k] for k in camera_part})
        if any(a <= i < b for a, b in f.nan_state) or self._rng.random() < f.nan_prob:
            self.log.append((i, "nan_state"))
            obs.update({k: float("nan") for k, v in self.robot.observation_features.items()
                        if v is float and not k.endswith(TIMESTAMP_SUFFIX)})
        delay = self._spikes.get(i, f.spike_s if self._rng.random() < f.spike_prob else 0.0)
        if delay:
            self.log.append((i, f"latency_spike {delay} s"))
            time.sleep(delay)  # the data was read before the delay: it arrives as old as the delay
        self._last = obs
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._check_link()
        return self.robot.send_action(action)
