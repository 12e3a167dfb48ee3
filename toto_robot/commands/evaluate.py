"""``toto-eval``: roll a policy out on seeded episodes and report success rate, return, length and timing.

    toto-eval                                      # the Lift expert on 10 episodes
    toto-eval env.task=Door policy=random n_episodes=50 n_workers=2
    toto-eval env.task=Stack n_episodes=50 env.cameras=[] n_videos=0     # fast: no rendering

Seeds start at 100000, disjoint from collection seeds. Writes eval.json (metrics, per-episode results, the
resolved config) and videos/seed_<seed>.mp4 into output_dir. `policy` is "expert", "random", or a config
whose _target_ builds a policy with reset() and select_action(obs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from envs import make_policy
from envs.runner import RolloutRunner, RunnerConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def run(cfg: DictConfig) -> dict:
    env_config = instantiate(cfg.env, _convert_="all")
    if isinstance(cfg.policy, str):
        policy = make_policy(cfg.policy, env_config.task, cfg.expert_noise)
        name = cfg.policy_name or cfg.policy
    elif OmegaConf.is_dict(cfg.policy) and "_target_" in cfg.policy:
        policy = instantiate(cfg.policy)
        name = cfg.policy_name or cfg.policy._target_.rsplit(".", 1)[-1]
    else:
        raise ValueError(f"policy: expected 'expert', 'random' or a config with _target_, got {cfg.policy}")
    output_dir = cfg.output_dir or str(Path("outputs/eval") / f"{env_config.task}-{name}")
    runner = RolloutRunner(
        RunnerConfig(
            n_episodes=cfg.n_episodes,
            seed_start=cfg.seed_start,
            n_workers=cfg.n_workers,
            n_videos=cfg.n_videos,
            output_dir=output_dir,
            env=env_config,
        )
    )
    metrics = runner.run(policy, name=name, progress=cfg.progress)
    print(
        f"{metrics['task']} {metrics['policy']}: success {metrics['success_rate']:.1%} over "
        f"{metrics['n_episodes']} episodes, mean return {metrics['mean_return']:.3f}, "
        f"mean length {metrics['mean_length']:.1f}, {metrics['steps_per_second']:.1f} steps/s"
    )
    print(f"wrote {metrics['json']}" + (f" and {cfg.n_videos} videos in {output_dir}/videos" if cfg.n_videos else ""))
    return metrics


@hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name="eval")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except InstantiationException as exc:  # a bad env setting: show the validation message, not hydra's wrapper
        print(f"toto-eval: error: {exc.__cause__ or exc}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError) as exc:
        print(f"toto-eval: error: {exc}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
