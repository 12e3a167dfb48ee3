"""A LeRobot `Robot` backed by our robosuite environments, and a fault-injecting wrapper for any `Robot`.

`SimRobot` speaks LeRobot's robot API exactly as a real arm does (`connect`, `get_observation`,
`send_action`, `disconnect`, flat feature dicts), so dry runs and tests exercise the same adapter and control
loop as hardware:
    observation: "<camera>" (S, S, 3) uint8 per camera; one float per state value: "eef_pos.x", ...,
                 "eef_quat.w", "gripper_qpos.left", ...
    action:      "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper" (robosuite's normalized OSC action)
    cameras:     {name: camera}, each with `latest_timestamp` (capture time, time.perf_counter()), as LeRobot's
                 cameras have: capture times stay out of the observation, so LeRobot's recorders
                 (hw_to_dataset_features) never store them as state; the adapter (envs/robot.py) reads them.
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
from dataclasses import dataclass
from typing import Any

import numpy as np
from lerobot.robots import Robot
from lerobot.utils.errors import DeviceAlreadyConnectedError, DeviceNotConnectedError

# The configs live in their own module, as LeRobot's robots keep theirs: make_robot_from_config finds each
# device class here, in the module named after the config's (config_sim_robot -> sim_robot).
from envs.config_sim_robot import (
    FAULTY_ROBOT_TYPE,
    SIM_ROBOT_TYPE,
    FaultConfig,
    FaultyRobotConfig,
    SimRobotConfig,
)
from envs.robosuite_env import RobosuiteEnv
from toto_robot.shapes import ROBOSUITE_PANDA, ROBOSUITE_PANDA_COMPONENTS

__all__ = ["ACTION_NAMES", "FAULTY_ROBOT_TYPE", "SIM_ROBOT_TYPE", "STATE_NAMES", "FaultConfig", "FaultyRobot",
           "FaultyRobotConfig", "FrameClock", "SimRobot", "SimRobotConfig", "capture_times"]

# LeRobot-style scalar feature names of the contract's action and state keys (toto_robot/shapes.py), in order.
ACTION_NAMES = ROBOSUITE_PANDA_COMPONENTS["action"]
# robosuite observation key -> feature names, e.g. "robot0_eef_pos" -> ("eef_pos.x", "eef_pos.y", "eef_pos.z")
STATE_NAMES = {key: tuple(f"{key.removeprefix('robot0_')}.{c}" for c in ROBOSUITE_PANDA_COMPONENTS[key])
               for key in ROBOSUITE_PANDA.state_keys}
if len(ACTION_NAMES) != ROBOSUITE_PANDA.action_dim or any(
        len(names) != ROBOSUITE_PANDA.state[key] for key, names in STATE_NAMES.items()):
    raise RuntimeError(f"sim robot features {STATE_NAMES}, {ACTION_NAMES} do not match the contract's state "
                       f"{ROBOSUITE_PANDA.state} and action size {ROBOSUITE_PANDA.action_dim}")


@dataclass
class FrameClock:
    """What the control loop needs of a camera: when its latest frame was captured (LeRobot's cameras'
    `latest_timestamp`, time.perf_counter() seconds; None before the first frame)."""

    latest_timestamp: float | None = None


def capture_times(robot: Robot) -> dict[str, float | None]:
    """Camera name -> capture time of its latest frame, for a robot whose cameras tell (LeRobot's cameras and
    ours keep `latest_timestamp`); {} for a robot without cameras."""
    cameras = robot.cameras if hasattr(robot, "cameras") else {}
    return {name: getattr(cam, "latest_timestamp", None) for name, cam in cameras.items()}


class SimRobot(Robot):
    config_class = SimRobotConfig
    name = SIM_ROBOT_TYPE

    def __init__(self, config: SimRobotConfig):
        # Robot.__init__ only sets up calibration files (and creates their directory under the HF cache); a
        # simulated arm has nothing to calibrate, so the attributes it sets are set here instead.
        self.config = config
        self.robot_type, self.id = self.name, config.id
        self.calibration_dir, self.calibration = config.calibration_dir, {}
        self.cameras = {name: FrameClock() for name in config.camera_names}
        self.env: RobosuiteEnv | None = None
        self._obs: dict[str, np.ndarray] = {}
        self.success = False

    @property
    def observation_features(self) -> dict[str, Any]:
        size = self.config.image_size
        features: dict[str, Any] = {}
        for cam in self.cameras:
            features[cam] = (size, size, 3)
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
        self.env = RobosuiteEnv(task=cfg.task, cameras=tuple(self.cameras), image_size=cfg.image_size,
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
        for cam, clock in self.cameras.items():
            out[cam] = self._obs[f"{cam}_image"]
            clock.latest_timestamp = now
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


class FaultyRobot(Robot):
    """Wraps a `Robot` and injects the faults of a `FaultConfig`; every injected fault is appended to `log`.

    Built by LeRobot from a `FaultyRobotConfig` (the simulated arm's config + the faults), or around any robot
    already built: `FaultyRobot.wrap(robot, faults)`. Its `cameras` report the capture times of the frames it
    returns (frozen in a stall, the previous frame's for a dropped one)."""

    config_class = FaultyRobotConfig
    name = FAULTY_ROBOT_TYPE

    def __init__(self, config: FaultyRobotConfig):
        self._setup(SimRobot(config), config.faults)
        self.config = config

    @classmethod
    def wrap(cls, robot: Robot, faults: FaultConfig) -> FaultyRobot:
        self = cls.__new__(cls)
        self._setup(robot, faults)
        return self

    def _setup(self, robot: Robot, faults: FaultConfig) -> None:
        # No Robot.__init__: the wrapped robot owns its calibration; this object only forwards to it.
        self.config = robot.config if hasattr(robot, "config") else None
        self.robot, self.faults = robot, faults
        self.robot_type, self.id, self.name = robot.robot_type, robot.id, f"faulty_{robot.name}"
        self.calibration_dir, self.calibration = robot.calibration_dir, robot.calibration
        self.cameras = {name: FrameClock() for name in capture_times(robot)}
        self.log: list[tuple[int, str]] = []
        self._rng = np.random.default_rng(faults.seed)
        self._index = 0
        self._disconnected = False
        self._last: dict[str, Any] | None = None  # previous observation (for dropped frames and stalls)
        self._last_times: dict[str, float | None] = {}  # its frames' capture times
        self._frozen: dict[str, Any] | None = None  # camera values frozen by a stall
        self._frozen_times: dict[str, float | None] = {}
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
        self._last_times, self._frozen_times = {}, {}

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
        times = capture_times(self.robot)
        camera_part = [k for k in obs if k in self._camera_keys()]
        stalled = any(a <= i < b for a, b in f.camera_stall)
        if stalled:
            if self._frozen is None:
                self._frozen = {k: (self._last or obs)[k] for k in camera_part}
                self._frozen_times = dict(self._last_times or times)
            self.log.append((i, "camera_stall"))
            obs.update(self._frozen)
            times = dict(self._frozen_times)
            stamps = [t for t in times.values() if t is not None]
            if stamps and time.perf_counter() - min(stamps) > f.camera_timeout_s:
                raise TimeoutError(f"camera frame is {time.perf_counter() - min(stamps):.2f} s old "
                                   f"(max allowed {f.camera_timeout_s} s; injected stall)")
        else:
            self._frozen = None
            if (i in f.dropped_frames or self._rng.random() < f.drop_prob) and self._last is not None:
                self.log.append((i, "dropped_frame"))
                obs.update({k: self._last[k] for k in camera_part})
                times = dict(self._last_times)
        for name, clock in self.cameras.items():
            clock.latest_timestamp = times.get(name)  # a camera with no capture time yet: None
        if any(a <= i < b for a, b in f.nan_state) or self._rng.random() < f.nan_prob:
            self.log.append((i, "nan_state"))
            obs.update({k: float("nan") for k, v in self.robot.observation_features.items() if v is float})
        delay = self._spikes.get(i, f.spike_s if self._rng.random() < f.spike_prob else 0.0)
        if delay:
            self.log.append((i, f"latency_spike {delay} s"))
            time.sleep(delay)  # the data was read before the delay: it arrives as old as the delay
        self._last, self._last_times = obs, times
        return obs

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._check_link()
        return self.robot.send_action(action)
