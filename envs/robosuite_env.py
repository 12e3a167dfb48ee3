"""Gymnasium environments over robosuite: camera images + proprioception in, normalized OSC actions out.

One class serves every task; `TASKS` says which robosuite environment, horizon and cameras each task has.
Observations (flat dict, keys as in robosuite / diffusion_policy; sizes: toto_robot.shapes.ROBOSUITE_PANDA):
    <camera>_image        uint8 (H, W, 3), upright, one per configured camera
    robot0_eef_pos        float32 (3,)  end-effector position, world frame (m)
    robot0_eef_quat       float32 (4,)  end-effector orientation, quaternion (x, y, z, w)
    robot0_gripper_qpos   float32 (2,)  finger joint positions
Action: float32 (7,) in [-1, 1]: OSC pose deltas (dx, dy, dz, droll, dpitch, dyaw) + gripper (-1 open, +1 close),
the default Panda controller of robosuite. Object poses are not observed; scripted experts read them through
`privileged_state()`, and collection stores them beside the observations as low-dimensional keys that image
policies ignore (`object_state()`):
    object                float32 (D,)  robosuite's object-state vector (poses of the task's objects and their
                                        offsets to the gripper; D per task in `TASKS`), robomimic's `object` key
    object_pos            float32 (3,)  position of the task's main object (cube, can, door handle, nut), world frame
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
import robosuite

from toto_robot.shapes import OBJECT_KEYS, ROBOSUITE_PANDA, ShapeMeta, camera_name, image_key  # noqa: F401 (OBJECT_KEYS: re-exported)

logging.getLogger("robosuite_logs").setLevel(logging.WARNING)  # one INFO line per env build otherwise

# Keys and sizes come from the shape contract (toto_robot/shapes.py); these names are its aliases.
ACTION_DIM = ROBOSUITE_PANDA.action_dim
PROPRIO_KEYS = ROBOSUITE_PANDA.state_keys
PROPRIO_DIMS = dict(ROBOSUITE_PANDA.state)
# Observation-space bounds of the state keys (metres / unit quaternion / rad): all the env adds to the contract.
PROPRIO_BOUNDS = {"robot0_eef_pos": 3.0, "robot0_eef_quat": 1.0, "robot0_gripper_qpos": 1.0}
if set(PROPRIO_BOUNDS) != set(PROPRIO_KEYS):
    raise RuntimeError(f"PROPRIO_BOUNDS: expected a bound per state key of the contract {PROPRIO_KEYS}, "
                      f"got {sorted(PROPRIO_BOUNDS)}")

ROBOT_TYPE = "panda"  # the arm every task uses (robosuite's "Panda"), as LeRobot datasets name their robot_type
_CAMERAS = ("agentview", "frontview", "birdview", "sideview", "robot0_robotview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class TaskSpec:
    robosuite_name: str
    instruction: str  # what the task asks, in words (the `task` of stored episodes)
    horizon: int  # default episode length in control steps (20 Hz)
    cameras: tuple[str, ...]  # cameras the scene defines
    object_dim: int  # size of robosuite's object-state vector for this task (the stored `object` key)
    object_pos_key: str  # robosuite observation holding the main object's position (the stored `object_pos`)


TASKS: dict[str, TaskSpec] = {
    "Lift": TaskSpec("Lift", "lift the red cube", horizon=200, cameras=_CAMERAS, object_dim=10,
                     object_pos_key="cube_pos"),
    "Stack": TaskSpec("Stack", "stack the red cube on the green cube", horizon=300, cameras=_CAMERAS,
                      object_dim=23, object_pos_key="cubeA_pos"),
    "PickPlaceCan": TaskSpec(
        "PickPlaceCan", "put the can in its bin", horizon=300, cameras=tuple(c for c in _CAMERAS if c != "sideview"),
        object_dim=14, object_pos_key="Can_pos",
    ),
    "Door": TaskSpec("Door", "open the door", horizon=300, cameras=_CAMERAS, object_dim=14,
                     object_pos_key="handle_pos"),
    # robomimic's Square: NutAssemblySquare is NutAssembly with only the square nut (single_object_mode=2,
    # nut_type="square"), to be put on the square peg. 400 steps: the horizon robomimic's and diffusion_policy's
    # Square (PH) evaluations use; the scripted expert needs about a third of it.
    "Square": TaskSpec("NutAssemblySquare", "put the square nut on the square peg", horizon=400, cameras=_CAMERAS,
                       object_dim=14, object_pos_key="SquareNut_pos"),
}


def check_task(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[task]


@dataclass(frozen=True)
class RenderConfig:
    """Offscreen renderer settings. Reflections off roughly doubles software (Mesa EGL) rendering speed."""

    reflection: bool = False
    shadow: bool = True
    skybox: bool = True


@dataclass
class EnvConfig:
    task: str = "Lift"
    cameras: tuple[str, ...] = tuple(camera_name(k) for k in ROBOSUITE_PANDA.cameras)  # () for state-only
    image_size: int = 84  # square camera images, pixels
    horizon: int | None = None  # None: the task's default (TASKS[task].horizon)
    control_freq: int = 20  # Hz
    reward_shaping: bool = False  # robosuite's dense reward instead of the sparse success reward
    video_camera: str = "agentview"  # camera of render() frames (videos)
    video_size: int = 256
    model_seed: int = 0  # seeds what robosuite randomizes when it builds the scene, not per episode
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        spec = check_task(self.task)
        self.cameras = tuple(self.cameras)
        for cam in (*self.cameras, self.video_camera):
            if cam not in spec.cameras:
                raise ValueError(f"unknown camera {cam!r} for task {self.task}; valid cameras: {', '.join(spec.cameras)}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras: duplicates in {self.cameras}")
        for name in ("image_size", "video_size", "control_freq"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.horizon is None:
            self.horizon = spec.horizon
        elif self.horizon <= 0:
            raise ValueError(f"horizon: must be positive or None (task default), got {self.horizon}")
        if isinstance(self.render, dict):  # from a config file
            self.render = RenderConfig(**self.render)

    @property
    def shape_meta(self) -> ShapeMeta:
        """What this env observes and takes: the contract's state and action, this config's cameras and size."""
        return ShapeMeta(cameras=tuple(image_key(c) for c in self.cameras), image_size=self.image_size,
                         state=ROBOSUITE_PANDA.state, action_dim=ROBOSUITE_PANDA.action_dim)


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """robosuite 1.5.1 draws object placements and joint noise from numpy's global RNG; seed it for one reset
    and give the caller's global RNG state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class RobosuiteEnv(gym.Env):
    """A robosuite task (Panda arm, default OSC controller) as a gymnasium environment.

    `terminated` is True on task success, `truncated` at the horizon; `info["success"]` every step.
    Build through gymnasium: `gymnasium.make("toto/Lift-v0", cameras=["agentview"], image_size=64)`.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "Lift", render_mode: str | None = None, **config: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.config = EnvConfig(task=task, **config)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.config.control_freq}
        cfg = self.config
        # Model-time randomness (e.g. the Lift cube's size) is drawn once, here: seed it so that every
        # process builds the same scene and episode seeds mean the same thing in every worker.
        with _global_numpy_seed(cfg.model_seed):
            self._env = robosuite.make(
                TASKS[cfg.task].robosuite_name,
                robots="Panda",
                has_renderer=False,
                has_offscreen_renderer=bool(cfg.cameras) or render_mode == "rgb_array",
                use_camera_obs=bool(cfg.cameras),
                use_object_obs=True,  # object poses feed privileged_state(), never the observation
                camera_names=list(cfg.cameras) or "agentview",
                camera_heights=cfg.image_size,
                camera_widths=cfg.image_size,
                reward_shaping=cfg.reward_shaping,
                control_freq=cfg.control_freq,
                horizon=cfg.horizon,
                ignore_done=True,  # the horizon is enforced here, as `truncated`
                hard_reset=False,  # keeps one sim and GL context for the env's life: fast resets
            )
        self._apply_render_config()

        self.observation_space = gym.spaces.Dict(self.observation_spaces(cfg))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._raw: dict[str, Any] = {}
        self._steps = 0

    # -- gymnasium API -------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._make_gl_current()
        with _global_numpy_seed(int(self.np_random.integers(2**32))):
            self._raw = self._env.reset()
        self._steps = 0
        return self._observation(), {"success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action: expected shape ({ACTION_DIM},), got {action.shape}")
        self._make_gl_current()
        self._raw, reward, _, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        success = bool(self._env._check_success())  # robosuite exposes the success test only as this method
        truncated = self._steps >= self.config.horizon and not success
        return self._observation(), float(reward), success, truncated, {"success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        size = self.config.video_size
        self._make_gl_current()
        frame = self._env.sim.render(camera_name=self.config.video_camera, width=size, height=size)
        return np.ascontiguousarray(frame[::-1])  # OpenGL rows run bottom-up

    def close(self) -> None:
        if getattr(self, "_env", None) is not None:
            self._env.close()
            self._env = None

    # -- beyond gymnasium ----------------------------------------------------------------------------------------

    @staticmethod
    def observation_spaces(config: EnvConfig) -> dict[str, gym.spaces.Box]:
        """The observation keys and spaces of an env with this configuration, without building it."""
        meta = config.shape_meta
        size = meta.image_size
        spaces = {key: gym.spaces.Box(0, 255, (size, size, 3), np.uint8) for key in meta.cameras}
        for key, n in meta.state.items():
            spaces[key] = gym.spaces.Box(-PROPRIO_BOUNDS[key], PROPRIO_BOUNDS[key], (n,), np.float32)
        return spaces

    @staticmethod
    def object_state_spaces(config: EnvConfig) -> dict[str, gym.spaces.Box]:
        """The privileged object-state keys `object_state()` returns, without building the env."""
        dim = TASKS[config.task].object_dim
        return {"object": gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32),
                "object_pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)}

    def object_state(self) -> dict[str, np.ndarray]:
        """Privileged object state of the current step (see the module docstring), float32."""
        spec = TASKS[self.config.task]
        state = {"object": self._raw["object-state"].astype(np.float32),
                 "object_pos": self._raw[spec.object_pos_key].astype(np.float32)}
        if state["object"].shape != (spec.object_dim,):  # robosuite changed its object observables
            raise RuntimeError(f"{self.config.task}: expected an object-state vector of {spec.object_dim} values, "
                               f"robosuite gave {state['object'].shape}")
        return state

    def privileged_state(self) -> dict[str, np.ndarray]:
        """Simulator state a scripted expert may use and a learned policy does not see: robosuite's object
        observations (poses of cubes, can, door handle, nut, ...), the end-effector pose and task constants."""
        raw = self._raw
        state = {
            k: np.asarray(v, dtype=np.float64)
            for k, v in raw.items()
            if not k.startswith("robot") and not k.endswith("_image") and k != "object-state"
        }
        for key in PROPRIO_KEYS:
            state[key] = np.asarray(raw[key], dtype=np.float64)
        state |= self.object_state()  # the stored object-state keys, for policies trained on them (`state`)
        env = self._env
        if self.config.task == "PickPlaceCan":
            state["target_bin_pos"] = env.target_bin_placements[env.object_id].copy()
            state["bin_size"] = np.asarray(env.bin_size, dtype=np.float64)
        if self.config.task == "Door":
            prefix = env.door.naming_prefix
            hinge = env.sim.model.joint_name2id(prefix + "hinge")
            latch = env.sim.model.joint_name2id(prefix + "latch_joint")
            state["hinge_pos"] = env.sim.data.xanchor[hinge].copy()
            state["latch_pos"] = env.sim.data.xanchor[latch].copy()
            state["latch_axis"] = env.sim.data.xaxis[latch].copy()  # normal of the door panel
        if self.config.task == "Square":
            state["SquareNut_handle_pos"] = env.sim.data.site_xpos[env.object_site_ids[env.nut_id]].copy()
            state["peg_pos"] = env.sim.data.body_xpos[env.peg1_body_id].copy()  # the square peg (peg2 is round)
            state["peg_quat"] = env.sim.data.body_xquat[env.peg1_body_id][[1, 2, 3, 0]]  # (x, y, z, w)
        return state

    @property
    def steps(self) -> int:
        return self._steps

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {key: np.ascontiguousarray(self._raw[key][::-1]) for key in map(image_key, self.config.cameras)}
        for key in PROPRIO_KEYS:
            obs[key] = self._raw[key].astype(np.float32)
        return obs

    def _make_gl_current(self) -> None:
        # robosuite makes a GL context current only when it creates it; with several envs in one process
        # (or after another env is closed) each env must make its own current before rendering.
        context = self._env.sim._render_context_offscreen
        if context is not None:
            context.gl_ctx.make_current()

    def _apply_render_config(self) -> None:
        # robosuite has no public handle on its offscreen context; the scene flags live on it.
        context = self._env.sim._render_context_offscreen
        if context is None:
            return
        flags = context.scn.flags
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.config.render.reflection)
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self.config.render.shadow)
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = int(self.config.render.skybox)
