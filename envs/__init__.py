"""Simulated robot environments (robosuite behind gymnasium), scripted experts and the rollout runner.

Importing this package registers `toto/<Task>-v0` for every task in `TASKS`:
    import envs, gymnasium
    env = gymnasium.make("toto/Lift-v0", cameras=["agentview"], image_size=64)
"""

import gymnasium

from envs.robosuite_env import TASKS, EnvConfig, RenderConfig, RobosuiteEnv

ENV_NAMESPACE = "toto"


def env_id(task: str) -> str:
    return f"{ENV_NAMESPACE}/{task}-v0"


for _task in TASKS:
    if env_id(_task) not in gymnasium.registry:
        gymnasium.register(id=env_id(_task), entry_point="envs.robosuite_env:RobosuiteEnv", kwargs={"task": _task})

__all__ = ["TASKS", "EnvConfig", "RenderConfig", "RobosuiteEnv", "env_id", "ENV_NAMESPACE"]
