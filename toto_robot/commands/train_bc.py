"""toto-train-bc: train a behavior-cloning policy on a trajectory store, evaluating it in simulation.

    toto-train-bc                                    # toto_mlp on the demo's Lift store and encoder
    toto-train-bc policy=cnn train.steps=5000 eval.n_episodes=50

The environment (task, cameras, image size) is read from the store's attributes, so rollouts see what
the demonstrations saw. Writes <out_dir>/{best,last} checkpoints, tb/ (TensorBoard), history.json and
the evaluations' eval.json + videos.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from envs.robosuite_env import EnvConfig
from envs.runner import RolloutRunner, RunnerConfig
from policies.bc import build_policy
from policies.train import TrainConfig, train_bc
from toto_robot.config import CONFIG_DIR
from toto_robot.store import TrajectoryStore


def run(cfg: DictConfig) -> dict:
    store_path = Path(cfg.store)
    if not store_path.exists():
        raise ValueError(f"store: expected a trajectory store at {store_path}, found nothing "
                         "(run toto-demo or toto-collect first, or pass store=...)")
    store = TrajectoryStore.open(store_path)
    env_attrs = store.attrs.get("env")
    if env_attrs is None:
        raise ValueError(f"store {store_path} has no 'env' attribute (written by toto-collect): cannot evaluate")
    env_cfg = EnvConfig(**env_attrs)
    node = OmegaConf.to_container(cfg.policy, resolve=True)
    cams = tuple(f"{c}_image" for c in env_cfg.cameras)
    policy = build_policy(node, cfg.encoder if node.get("backbone") != "cnn" else None, cams, env_cfg.image_size)
    out = Path(cfg.out_dir or f"outputs/bc/{env_cfg.task}-{node['name']}")
    evaluate = None
    if cfg.eval.n_episodes > 0:
        def evaluate(p, step):
            runner = RolloutRunner(RunnerConfig(n_episodes=cfg.eval.n_episodes, n_videos=cfg.eval.n_videos,
                                                n_workers=cfg.eval.n_workers, output_dir=str(out / f"eval_{step}"),
                                                env=env_cfg))
            m = runner.run(p, name=node["name"])
            return {"success_rate": m["success_rate"], "mean_length": m["mean_length"]}
    res = train_bc(policy, store_path, TrainConfig(**cfg.train), out, evaluate=evaluate)
    print(f"best success rate {res['best_success_rate']:.1%}; checkpoints in {out.resolve()} (best/, last/), "
          f"TensorBoard logs in {out.resolve() / 'tb'}")
    return res


@hydra.main(config_path=CONFIG_DIR, config_name="train_bc", version_base=None)
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ValueError as e:
        print(f"toto-train-bc: error: {e}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _main()
