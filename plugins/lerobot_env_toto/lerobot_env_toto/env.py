"""The `toto` env type: its config (registered with LeRobot) and the gymnasium env LeRobot rolls out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from lerobot.configs import FeatureType, PolicyFeature
from lerobot.envs import EnvConfig
from lerobot.utils.constants import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

from envs.robosuite_env import TASKS, RobosuiteEnv, check_task
from envs.robosuite_env import EnvConfig as RobosuiteConfig
from toto_robot.shapes import OBJECT_KEYS, ROBOSUITE_PANDA, camera_name

TOTO_ENV_TYPE = "toto"
PACKAGE = "lerobot_env_toto"


def gym_id(task: str) -> str:
    return f"{PACKAGE}/{task}-v0"


class TotoLeRobotEnv(gym.Env):
    """A robosuite task with LeRobot's observation layout (see the package docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str, cameras: list[str], image_size: int, render_mode: str | None = "rgb_array",
                 **config: Any):
        self._env = RobosuiteEnv(task=task, render_mode=render_mode, cameras=tuple(cameras), image_size=image_size,
                                 **config)
        self.task, self.task_description = task, TASKS[task].instruction
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self._env.config.control_freq}
        spaces = RobosuiteEnv.observation_spaces(self._env.config)
        objects = RobosuiteEnv.object_state_spaces(self._env.config)
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Dict({camera_name(k): spaces[k] for k in self._env.config.shape_meta.cameras}),
            "agent_pos": gym.spaces.Box(-np.inf, np.inf, (ROBOSUITE_PANDA.state_size,), np.float32),
            "environment_state": gym.spaces.Box(-np.inf, np.inf, (sum(objects[k].shape[0] for k in OBJECT_KEYS),),
                                                np.float32),
        })
        self.action_space = self._env.action_space

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, Any]:
        objects = self._env.object_state()
        return {
            "pixels": {camera_name(k): obs[k] for k in self._env.config.shape_meta.cameras},
            "agent_pos": np.concatenate([obs[k] for k in ROBOSUITE_PANDA.state_keys]).astype(np.float32),
            "environment_state": np.concatenate([objects[k] for k in OBJECT_KEYS]).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self._env.reset(seed=seed)
        return self._observation(obs), {"is_success": info["success"]}

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        return self._observation(obs), reward, terminated, truncated, {"is_success": info["success"]}

    def render(self):
        return self._env.render()

    def close(self) -> None:
        self._env.close()


for _task in TASKS:
    if gym_id(_task) not in gym.registry:
        gym.register(id=gym_id(_task), entry_point=f"{PACKAGE}.env:TotoLeRobotEnv", kwargs={"task": _task})


@EnvConfig.register_subclass(TOTO_ENV_TYPE)
@dataclass
class TotoEnv(EnvConfig):
    task: str | None = "Lift"
    fps: int = 20  # the control rate (robosuite's control_freq)
    cameras: list[str] = field(default_factory=lambda: [camera_name(k) for k in ROBOSUITE_PANDA.cameras])
    image_size: int = ROBOSUITE_PANDA.image_size
    episode_length: int | None = None  # None: the task's horizon
    render_mode: str = "rgb_array"

    def __post_init__(self) -> None:
        spec = check_task(self.task)  # an unknown task: the error lists the valid ones
        unknown = [c for c in self.cameras if c not in spec.cameras]
        if unknown:
            raise ValueError(f"env.cameras: {unknown} are not cameras of task {self.task}; its cameras: "
                             f"{list(spec.cameras)}")
        if self.episode_length is None:
            self.episode_length = spec.horizon
        size = self.image_size
        self.features = {camera: PolicyFeature(type=FeatureType.VISUAL, shape=(size, size, 3))
                         for camera in self.cameras}
        self.features["agent_pos"] = PolicyFeature(type=FeatureType.STATE, shape=(ROBOSUITE_PANDA.state_size,))
        objects = RobosuiteEnv.object_state_spaces(RobosuiteConfig(task=self.task))
        self.features["environment_state"] = PolicyFeature(
            type=FeatureType.ENV, shape=(sum(objects[k].shape[0] for k in OBJECT_KEYS),))
        self.features[ACTION] = PolicyFeature(type=FeatureType.ACTION, shape=(ROBOSUITE_PANDA.action_dim,))
        self.features_map = {camera: f"{OBS_IMAGES}.{camera}" for camera in self.cameras}
        self.features_map |= {"agent_pos": OBS_STATE, "environment_state": OBS_ENV_STATE, ACTION: ACTION}

    @property
    def package_name(self) -> str:
        return PACKAGE

    @property
    def gym_id(self) -> str:
        return gym_id(self.task)

    @property
    def gym_kwargs(self) -> dict:
        return {"cameras": list(self.cameras), "image_size": self.image_size, "horizon": self.episode_length,
                "control_freq": self.fps, "render_mode": self.render_mode,
                "max_episode_steps": self.episode_length}
