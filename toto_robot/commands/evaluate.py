"""``toto-eval``: roll a policy out on seeded episodes and report success rate, return, length and timing.

    toto-eval                                      # the Lift expert on 10 episodes
    toto-eval env.task=Door policy=random n_episodes=50 n_workers=2
    toto-eval env.task=Stack n_episodes=50 env.cameras=[] n_videos=0     # fast: no rendering
    toto-eval env.task=Square n_episodes=50 env.cameras=[] n_videos=0 results=results/experts/Square-expert.json

Seeds start at 100000, disjoint from collection seeds. Writes eval.json (metrics, per-episode results, the
resolved config) and videos/seed_<seed>.mp4 into output_dir; `results=PATH` also writes a results record (the
figures, the seeds, the command, threads and git commit). `policy` picks from configs/policy: "expert",
"random", or "checkpoint" with policy.path=<a trained BC policy directory>.
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from envs import make_policy
from envs.runner import RolloutRunner, RunnerConfig
from toto_robot.commands.entry import entry_point
from toto_robot.results import run_context, write_record

RECORD_KEYS = ("task", "policy", "n_episodes", "success_rate", "success_ci95", "mean_return", "mean_length",
               "steps_per_second")


def run(cfg: DictConfig) -> dict:
    context = run_context()  # the commit and load as the run starts
    env_config = instantiate(cfg.env, _convert_="all")
    node = OmegaConf.to_container(cfg.policy, resolve=True)
    kind = node.pop("name")
    name = cfg.policy_name or kind
    if "_target_" in node:  # e.g. policy=checkpoint policy.path=... (a trained BC policy)
        policy = instantiate(node)
    elif node.get("scripted", False):
        policy = make_policy(kind, env_config.task, cfg.expert_noise)
    else:
        raise ValueError(f"policy: expected a scripted policy (policy=expert, policy=random) or a trained one "
                         f"(policy=checkpoint policy.path=...), got {name!r}")
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
    if cfg.results:
        episodes = metrics["episodes"]
        record = {**{k: metrics[k] for k in RECORD_KEYS}, "expert_noise": cfg.expert_noise,
                  "cameras": list(env_config.cameras), "horizon": env_config.horizon,
                  "seeds": [e["seed"] for e in episodes], "successes": [e["seed"] for e in episodes if e["success"]]}
        print(f"results record: {write_record(cfg.results, record, context)}")
    return metrics


main = entry_point("eval", "eval", run)


if __name__ == "__main__":
    main()
