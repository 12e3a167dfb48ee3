"""LeRobot env plugin: our robosuite tasks (envs/robosuite_env.py) as the env type `toto`, for lerobot-eval.

    lerobot-eval --env.type=toto --env.task=Lift --policy.path=<checkpoint> --eval.batch_size=1

Observations use LeRobot's names (toto_robot/lerobot_io.py exports datasets with the same ones):
`pixels` {camera: (S, S, 3) uint8} -> observation.images.<camera>, `agent_pos` (the shape contract's state,
9 floats) -> observation.state, `environment_state` (object state: `object` then `object_pos`) ->
observation.environment_state. `info["is_success"]` reports task success.
"""

from lerobot_env_toto.env import TOTO_ENV_TYPE, TotoEnv, TotoLeRobotEnv, gym_id

__all__ = ["TOTO_ENV_TYPE", "TotoEnv", "TotoLeRobotEnv", "gym_id"]
