"""Any LeRobot robot as the control loop's robot: its camera and state keys mapped to the policy's keys.

    robot = make_lerobot_robot({"type": "so101_follower", "port": "/dev/ttyACM0",
                                "cameras": {"wrist": {"type": "opencv", "index_or_path": 0,
                                                      "width": 640, "height": 480, "fps": 30}}})
    mapping = RobotMapping(cameras={"robot0_eye_in_hand_image": "wrist"},
                           state={"joint_pos": ["shoulder_pan.pos", "shoulder_lift.pos", ...]},
                           action=["shoulder_pan.pos", "shoulder_lift.pos", ...], image_size=64)
    with LeRobotAdapter(robot, mapping) as adapter:     # connects, checks the mapping, disconnects
        run_episode(adapter, policy, loop, safety)

`make_lerobot_robot` builds a robot from a plain dict (hydra config): `type` names any robot LeRobot knows
(its own, third-party `lerobot_robot_*` plugins, and `toto_sim`, our simulated arm); the other fields are that
robot's config fields, decoded by draccus exactly as LeRobot's command line does.

Observations: each policy image key takes one camera, brought to `image_size` if given by
`toto_robot.frames.preprocess_frame` (centre crop to a square, box resampling: what pretraining's frames go
through), each policy state key concatenates scalar features into float32. The capture time is the oldest
`latest_timestamp` of the mapped cameras (LeRobot's cameras keep it, our simulated ones too; it stays out of the
observation, which LeRobot records as state), else the time the observation was requested. Actions: the policy's vector goes out as {name: float} in the order of `action`. What a mapping
delivers, as a shape contract (toto_robot/shapes.py), is `RobotMapping.shape_meta`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, Self

import draccus
import numpy as np
from lerobot.robots import Robot, RobotConfig, make_robot_from_config
from lerobot.utils.import_utils import register_third_party_plugins

import envs.config_sim_robot  # noqa: F401  (registers the robot types "toto_sim" and "toto_faulty")
from envs.sim_robot import capture_times
from toto_robot.deploy import TimedObservation
from toto_robot.frames import preprocess_frame
from toto_robot.shapes import ShapeMeta


def _register_lerobot_types() -> None:
    """Import LeRobot's robot and camera packages (each registers its config types) and third-party plugins."""
    import lerobot.cameras
    import lerobot.robots

    for package in (lerobot.robots, lerobot.cameras):
        for module in pkgutil.iter_modules(package.__path__):
            if module.ispkg:
                try:
                    importlib.import_module(f"{package.__name__}.{module.name}")
                except ImportError:  # a robot whose SDK is not installed cannot be configured anyway
                    continue
    register_third_party_plugins()


def lerobot_robot_config(config: dict[str, Any]) -> RobotConfig:
    """{"type": <robot type>, <its config fields>...} -> that type's LeRobot RobotConfig (draccus decoding)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"robot config: expected a mapping with a 'type' key (a LeRobot robot type), got {config!r}")
    if config["type"] not in RobotConfig.get_known_choices():
        _register_lerobot_types()
    known = sorted(RobotConfig.get_known_choices())
    if config["type"] not in known:
        raise ValueError(f"robot type: expected one of {known}, got {config['type']!r}")
    try:
        return draccus.decode(RobotConfig, dict(config))
    except draccus.utils.DecodingError as exc:
        raise ValueError(f"robot config for {config['type']!r}: {exc}") from exc


def make_lerobot_robot(config: dict[str, Any]) -> Robot:
    """A LeRobot robot (not connected) from {"type": <robot type>, <its config fields>...}."""
    robot_config = lerobot_robot_config(config)
    try:
        return make_robot_from_config(robot_config)
    except ImportError as exc:  # the robot's driver SDK (a LeRobot extra) is not installed
        raise ValueError(f"robot type {config['type']!r}: {exc}") from exc


@dataclass
class RobotMapping:
    cameras: dict[str, str] = field(default_factory=dict)  # policy image key -> robot camera key
    state: dict[str, list[str]] = field(default_factory=dict)  # policy state key -> robot scalar features
    action: list[str] = field(default_factory=list)  # robot action features, in the policy's action order
    image_size: int | None = None  # square size of policy images; None: as the camera delivers them

    def __post_init__(self) -> None:
        if not self.action:
            raise ValueError("RobotMapping.action: expected the robot's action feature names, got none")
        if not self.cameras and not self.state:
            raise ValueError("RobotMapping: expected at least one camera or state key to observe, got none")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"RobotMapping.image_size: expected a positive size or None, got {self.image_size}")
        self.cameras, self.action = dict(self.cameras), list(self.action)
        self.state = {k: list(v) for k, v in self.state.items()}

    @property
    def shape_meta(self) -> ShapeMeta:
        """The shape contract this mapping delivers (policy keys, image size, state sizes, action size), to check
        against a policy's: `policy_meta.check(mapping.shape_meta, "robot.mapping")`."""
        if self.image_size is None:
            raise ValueError("RobotMapping.image_size: a shape contract needs a fixed image size, got None "
                             "(images as the camera delivers them)")
        return ShapeMeta(cameras=tuple(self.cameras), image_size=self.image_size,
                         state={k: len(names) for k, names in self.state.items()}, action_dim=len(self.action))


class LeRobotAdapter:
    """A LeRobot `Robot` behind the control loop's `ControlRobot` interface (toto_robot/deploy/config.py)."""

    def __init__(self, robot: Robot, mapping: RobotMapping):
        self.robot, self.mapping = robot, mapping
        self.action_dim = len(mapping.action)
        self._check_features()

    def _check_features(self) -> None:
        obs_features, act_features = self.robot.observation_features, self.robot.action_features
        wanted = [*self.mapping.cameras.values(), *(n for names in self.mapping.state.values() for n in names)]
        missing = [k for k in wanted if k not in obs_features]
        if missing:
            raise ValueError(f"robot {self.robot.name}: the mapping reads observation keys {missing}, which the robot "
                             f"does not have; it has {sorted(obs_features)}")
        for policy_key, cam in self.mapping.cameras.items():
            shape = obs_features[cam]
            if not (isinstance(shape, tuple) and len(shape) == 3 and shape[2] == 3):
                raise ValueError(f"mapping cameras[{policy_key!r}]: robot key {cam!r} is not an (H, W, 3) image; "
                                 f"its feature is {shape}")
        missing = [k for k in self.mapping.action if k not in act_features]
        if missing:
            raise ValueError(f"robot {self.robot.name}: the mapping sends action keys {missing}, which the robot does "
                             f"not take; it takes {sorted(act_features)}")
        unsent = [k for k in act_features if k not in self.mapping.action]
        if unsent:
            raise ValueError(f"robot {self.robot.name}: the mapping leaves action keys {unsent} unset; map every "
                             f"action key of the robot: {sorted(act_features)}")

    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Policy observation keys -> (shape, dtype), for the episode log's schema."""
        features = self.robot.observation_features
        spec: dict[str, tuple[tuple[int, ...], str]] = {}
        for policy_key, cam in self.mapping.cameras.items():
            size = self.mapping.image_size
            spec[policy_key] = ((size, size, 3) if size else tuple(features[cam]), "uint8")
        for policy_key, names in self.mapping.state.items():
            spec[policy_key] = ((len(names),), "float32")
        return spec

    # -- ControlRobot ----------------------------------------------------------------------------------------

    def get_observation(self) -> TimedObservation:
        t_request = time.perf_counter()
        raw = self.robot.get_observation()
        data: dict[str, np.ndarray] = {}
        times = capture_times(self.robot)
        stamps = []
        for policy_key, cam in self.mapping.cameras.items():
            image = np.asarray(raw[cam])
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"camera {cam!r}: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
            data[policy_key] = preprocess_frame(image, self.mapping.image_size) if self.mapping.image_size else image
            if cam in times and times[cam] is not None:
                stamps.append(float(times[cam]))
        for policy_key, names in self.mapping.state.items():
            data[policy_key] = np.array([raw[n] for n in names], dtype=np.float32)
        return TimedObservation(data, min(stamps, default=t_request))

    def send_action(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},) for {self.mapping.action}, "
                             f"got {action.shape}")
        self.robot.send_action(dict(zip(self.mapping.action, action.tolist(), strict=True)))

    # -- lifecycle ------------------------------------------------------------------------------------------

    def begin_episode(self, seed: int | None) -> None:
        """Reset a robot that can reset itself (the simulated one); a real scene is reset by hand."""
        reset = getattr(self.robot, "reset", None)
        if reset is not None and seed is not None:
            reset(seed)

    @property
    def success(self) -> bool | None:
        """Task success when the robot can tell (simulation), else None."""
        value = getattr(self.robot, "success", None)
        return None if value is None else bool(value)

    def connect(self) -> None:
        self.robot.connect()

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
