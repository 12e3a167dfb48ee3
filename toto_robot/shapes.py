"""The shape contract between data, environments, policies and robots (diffusion_policy's `shape_meta`).

    meta = ROBOSUITE_PANDA                        # the project's robosuite contract
    meta.obs_keys        # ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", ...)
    meta.state_size      # 9: the state keys' sizes summed, in `state` order
    ShapeMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    dataclasses.replace(meta, image_size=84)     # another contract, validated again

A `ShapeMeta` says what one observation and one action look like: the camera image keys (each a square
(image_size, image_size, 3) uint8 frame), the low-dimensional state keys with their sizes (float32, in the
order a policy concatenates them) and the size of the action vector. It is declared once per robot here and
read everywhere else: the robosuite env's observation spaces (envs/robosuite_env.py), the policies' default
inputs (policies/bc.py, policies/reference.py), the simulated LeRobot arm's state features (envs/sim_robot.py)
and the robot mapping a deployment checks (envs/robot.py). Plain Python, no numpy or torch: the robot side
imports it for free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IMAGE_SUFFIX = "_image"  # observation key of a camera: "<camera>_image" (robosuite, robomimic, diffusion_policy)


def image_key(camera: str) -> str:
    """Camera name -> its observation key: "agentview" -> "agentview_image"."""
    return camera + IMAGE_SUFFIX


def camera_name(key: str) -> str:
    """Observation key of a camera -> the camera's name: "agentview_image" -> "agentview"."""
    if not key.endswith(IMAGE_SUFFIX) or key == IMAGE_SUFFIX:
        raise ValueError(f"camera key: expected '<camera>{IMAGE_SUFFIX}', got {key!r}")
    return key.removesuffix(IMAGE_SUFFIX)


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, eq=False)  # equality below: the order of `state` is part of the contract
class ShapeMeta:
    cameras: tuple[str, ...]  # image observation keys, each (image_size, image_size, 3) uint8
    image_size: int  # square side of every camera image, pixels
    state: Mapping[str, int]  # state observation key -> size (float32 vector); ordered as policies concatenate
    action_dim: int  # size of the action vector

    def __post_init__(self) -> None:
        if isinstance(self.cameras, str) or not all(isinstance(c, str) and c for c in self.cameras):
            raise ValueError(f"ShapeMeta.cameras: expected a sequence of non-empty key strings, got {self.cameras!r}")
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"ShapeMeta.cameras: expected distinct keys, got {self.cameras}")
        if not _is_size(self.image_size):
            raise ValueError(f"ShapeMeta.image_size: expected a positive integer, got {self.image_size!r}")
        if not isinstance(self.state, Mapping):
            raise TypeError(f"ShapeMeta.state: expected a mapping of key -> size, got {self.state!r}")
        object.__setattr__(self, "state", dict(self.state))  # a private copy: the contract cannot change under us
        bad = {k: v for k, v in self.state.items() if not (isinstance(k, str) and k and _is_size(v))}
        if bad:
            raise ValueError(f"ShapeMeta.state: expected non-empty keys with positive integer sizes, got {bad}")
        both = sorted(set(self.cameras) & set(self.state))
        if both:
            raise ValueError(f"ShapeMeta.state: keys {both} are also camera keys")
        if not self.cameras and not self.state:
            raise ValueError("ShapeMeta: expected at least one camera or state key, got none")
        if not _is_size(self.action_dim):
            raise ValueError(f"ShapeMeta.action_dim: expected a positive integer, got {self.action_dim!r}")

    def _fields(self) -> tuple:
        return self.cameras, self.image_size, tuple(self.state.items()), self.action_dim

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShapeMeta) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    @property
    def state_keys(self) -> tuple[str, ...]:
        return tuple(self.state)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        return tuple(self.state.values())

    @property
    def state_size(self) -> int:
        """Length of the concatenated state vector."""
        return sum(self.state.values())

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """Every observation key: cameras, then state, in order."""
        return (*self.cameras, *self.state)

    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Observation key -> (shape, dtype name), the schema format of `TrajectoryStore` and the episode log."""
        size = self.image_size
        spec = {key: ((size, size, 3), "uint8") for key in self.cameras}
        spec |= {key: ((n,), "float32") for key, n in self.state.items()}
        return spec

    def check(self, other: ShapeMeta, what: str = "shape contract") -> None:
        """Raise ValueError, naming every field that differs, unless `other` is this contract."""
        names = ("cameras", "image_size", "state", "action_dim")
        diffs = [f"{name} {getattr(other, name)!r} (expected {getattr(self, name)!r})"
                 for name, mine, theirs in zip(names, self._fields(), other._fields(), strict=True) if mine != theirs]
        if diffs:
            raise ValueError(f"{what}: " + "; ".join(diffs))

    # -- JSON (checkpoint configs, store attributes) ----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras), "image_size": self.image_size, "state": dict(self.state),
                "action_dim": self.action_dim}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapeMeta:
        fields = ("cameras", "image_size", "state", "action_dim")
        if not isinstance(data, Mapping) or set(data) != set(fields):
            got = sorted(data) if isinstance(data, Mapping) else repr(data)
            raise ValueError(f"ShapeMeta.from_dict: expected exactly the keys {list(fields)}, got {got}")
        return cls(**data)


# The project's robosuite contract: a Panda arm under robosuite's default OSC controller, the two cameras of
# diffusion_policy's robosuite tasks at the Toto encoder's image size (the tokenizer's 64 px; the env can
# render another size, `EnvConfig.image_size`), proprioception as robosuite names it, and the normalized OSC
# action (dx, dy, dz, droll, dpitch, dyaw, gripper) in [-1, 1].
ROBOSUITE_PANDA = ShapeMeta(
    cameras=("agentview_image", "robot0_eye_in_hand_image"),
    image_size=64,
    state={"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2},
    action_dim=7,
)

# Per-dimension names of the contract's vectors (a LeRobot feature's `names`): a state key's entries are named
# "<key>.<component>" ("robot0_eef_pos.x"), the action's by their component alone ("dx").
ROBOSUITE_PANDA_COMPONENTS: dict[str, tuple[str, ...]] = {
    "robot0_eef_pos": ("x", "y", "z"),
    "robot0_eef_quat": ("x", "y", "z", "w"),
    "robot0_gripper_qpos": ("left", "right"),
    "action": ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
}
if {k: len(v) for k, v in ROBOSUITE_PANDA_COMPONENTS.items()} != {**ROBOSUITE_PANDA.state,
                                                                   "action": ROBOSUITE_PANDA.action_dim}:
    raise RuntimeError(f"ROBOSUITE_PANDA_COMPONENTS {ROBOSUITE_PANDA_COMPONENTS} do not match the contract's "
                       f"state {ROBOSUITE_PANDA.state} and action size {ROBOSUITE_PANDA.action_dim}")
# Privileged object state that collection stores beside the observation (envs/robosuite_env.py documents the
# keys); LeRobot calls it the environment state (observation.environment_state), which image policies ignore.
OBJECT_KEYS = ("object", "object_pos")
