"""``toto-collect``: roll a scripted expert (or the random policy) out and append episodes to a Zarr store.

    toto-collect                                   # 10 Lift demonstrations -> outputs/demos/Lift.zarr
    toto-collect env.task=Stack n_episodes=200 n_workers=2 expert_noise=0.1
    toto-collect env.cameras=[agentview] env.image_size=64 output=demos/lift64.zarr

Options live in configs/collect.yaml and configs/env/robosuite.yaml (hydra overrides). Re-running with the
same output resumes: episodes are appended until the store holds n_episodes.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from envs import make_policy
from envs.collect import collect
from toto_robot.commands.entry import entry_point
from toto_robot.store import TrajectoryStore


def scripted_policy_name(node) -> str:
    """`policy` is a node of configs/policy; collection takes the scripted ones (expert, random)."""
    if not node.get("scripted", False):
        raise ValueError(f"policy: toto-collect rolls out scripted policies (policy=expert or policy=random), "
                         f"got {node.get('name')!r}")
    return node.name


def run(cfg: DictConfig) -> TrajectoryStore:
    env_config = instantiate(cfg.env, _convert_="all")
    name = scripted_policy_name(cfg.policy)
    policy = make_policy(name, env_config.task, cfg.expert_noise)
    output = Path(cfg.output) if cfg.output else Path("outputs/demos") / f"{env_config.task}.zarr"
    store = collect(
        output,
        policy,
        env_config,
        cfg.n_episodes,
        keep_failed=cfg.keep_failed,
        n_workers=cfg.n_workers,
        seed_start=cfg.seed_start,
        max_attempts=cfg.max_attempts,
        source=f"{name}(noise={cfg.expert_noise})" if name == "expert" else name,
        progress=cfg.progress,
    )
    print(f"wrote {store.n_episodes} episodes ({store.n_steps} steps) to {store.path}")
    return store


main = entry_point("collect", "collect", run)


if __name__ == "__main__":
    main()
