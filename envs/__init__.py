"""Simulated robot environments (robosuite behind gymnasium), scripted experts and the rollout runner.

Importing this package registers `toto/<Task>-v0` for every task in `TASKS`:
    import envs, gymnasium
    env = gymnasium.make("toto/Lift-v0", cameras=["agentview"], image_size=64)
"""

import os

# Headless offscreen rendering by default. Set before robosuite is first imported: it picks its GL backend then.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import gymnasium

from envs.experts import EXPERTS, ScriptedExpert, make_expert
from envs.random_policy import RandomPolicy
from envs.robosuite_env import TASKS, EnvConfig, RenderConfig, RobosuiteEnv

ENV_NAMESPACE = "toto"
POLICIES = ("expert", "random")  # the built-in policies, by name


def env_id(task: str) -> str:
    return f"{ENV_NAMESPACE}/{task}-v0"


def make_policy(name: str, task: str, expert_noise: float = 0.0) -> ScriptedExpert | RandomPolicy:
    """A built-in policy by name: the task's scripted expert or the uniform random policy."""
    if name == "expert":
        return make_expert(task, noise=expert_noise)
    if name == "random":
        return RandomPolicy()
    raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")


for _task in TASKS:
    if env_id(_task) not in gymnasium.registry:
        gymnasium.register(id=env_id(_task), entry_point="envs.robosuite_env:RobosuiteEnv", kwargs={"task": _task})

__all__ = [
    "ENV_NAMESPACE", "EXPERTS", "POLICIES", "TASKS", "EnvConfig", "RandomPolicy", "RenderConfig", "RobosuiteEnv",
    "ScriptedExpert",
    "env_id", "make_expert", "make_policy",
]
