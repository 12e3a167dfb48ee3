"""toto-train-bc: train a behavior-cloning policy on a trajectory store, evaluating it in simulation.

    toto-train-bc                                    # toto_flat_aug on the demo's Lift store and encoder
    toto-train-bc policy=cnn train.steps=5000 eval.n_episodes=50 results=results/bc/lift-cnn.json

The environment (task, cameras, image size) is read from the store's attributes, so rollouts see what
the demonstrations saw. The checkpoint is chosen on the selection seeds (200000, ...; only when
train.eval_every < train.steps) and reported on the test seeds (100000, ...). Writes <out_dir>/{best,last}
checkpoints, tb/ (TensorBoard), history.json, select/ and test/ evaluations (eval.json + videos), and with
`results=PATH` a results record (figures, command, seeds, threads, git commit).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from envs.robosuite_env import EnvConfig
from policies.bc import build_policy
from policies.train import TrainConfig
from toto_robot.commands.bc_protocol import bc_record, low_dim_sizes, train_and_test
from toto_robot.commands.entry import entry_point
from toto_robot.results import run_context, write_record
from toto_robot.store import TrajectoryStore
from toto_robot.typecheck import build


def run(cfg: DictConfig) -> dict:
    context = run_context()  # the commit and load as the run starts
    store_path = Path(cfg.store)
    if not store_path.exists():
        raise ValueError(f"store: expected a trajectory store at {store_path}, found nothing "
                         "(run toto-demo or toto-collect first, or pass store=...)")
    store = TrajectoryStore.open(store_path)
    env_attrs = store.attrs.get("env")
    if env_attrs is None:
        raise ValueError(f"store {store_path} has no 'env' attribute (written by toto-collect): cannot evaluate")
    env_cfg = EnvConfig(**env_attrs)
    train = build(TrainConfig, OmegaConf.to_container(cfg.train, resolve=True), "train")
    node = OmegaConf.to_container(cfg.policy, resolve=True)
    name = node["name"]
    node["seed"] = cfg.train.seed
    cams = tuple(f"{c}_image" for c in env_cfg.cameras)
    policy = build_policy(node, cfg.encoder if node.get("backbone") in ("toto", "toto_random") else None, cams,
                          env_cfg.image_size, low_dim_sizes=low_dim_sizes(store_path))
    out = Path(cfg.out_dir or f"outputs/bc/{env_cfg.task}-{name}")
    res = train_and_test(policy, store_path, train, out, env_cfg, name, n_test=cfg.eval.n_episodes,
                         n_select=cfg.eval.n_select, n_workers=cfg.eval.n_workers, n_videos=cfg.eval.n_videos)
    test = res["test"]
    lo, hi = test["success_ci95"]
    print(f"test success {test['success_rate']:.1%} (95% CI {lo:.0%}-{hi:.0%}) over {test['n_episodes']} episodes "
          f"from seed {test['episodes'][0]['seed']}; checkpoints in {out.resolve()} (best/, last/), "
          f"TensorBoard logs in {out.resolve() / 'tb'}")
    if cfg.results:
        print(f"results record: {write_record(cfg.results, bc_record(policy, store_path, train, res, name), context)}")
    return res


main = entry_point("train-bc", "train_bc", run)


if __name__ == "__main__":
    main()
