"""The behavior-cloning evaluation protocol shared by `toto-train-bc` and `toto-demo`.

Train, choosing the checkpoint by rollout success on the *selection* seeds (200000, ...) when there is more
than one candidate; then roll the chosen checkpoint out on the *test* seeds (100000, ...) and report that,
with a 95% Wilson interval. The reported seeds are never the ones a checkpoint was picked on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from envs.robosuite_env import EnvConfig
from envs.runner import SELECTION_SEED_START, TEST_SEED_START, RolloutRunner, RunnerConfig
from policies.bc import BCPolicy
from policies.features import layer_label
from policies.train import TrainConfig, train_bc
from toto_robot.checkpoint import read_config
from toto_robot.model import MODEL_PRESETS
from toto_robot.store import TrajectoryStore


def low_dim_sizes(store_path: str | Path) -> dict[str, int]:
    """Key -> size of a store's low-dimensional keys (what `build_policy` sizes the state baseline with)."""
    return {k: shape[0] for k, (shape, _dtype) in TrajectoryStore.open(store_path).schema.items() if len(shape) == 1}


def rollout_evaluator(env: EnvConfig, n_episodes: int, seed_start: int, out_dir: Path, name: str,
                      n_workers: int = 1, n_videos: int = 0) -> Callable[[BCPolicy, int], dict]:
    """`evaluate(policy, step)` for `train_bc`: rollouts on seeds seed_start.. written under out_dir/eval_<step>."""

    def evaluate(policy: BCPolicy, step: int) -> dict:
        runner = RolloutRunner(RunnerConfig(n_episodes=n_episodes, seed_start=seed_start, n_workers=n_workers,
                                            n_videos=n_videos, output_dir=str(out_dir / f"eval_{step}"), env=env))
        m = runner.run(policy, name=name)
        return {"success_rate": m["success_rate"], "mean_length": m["mean_length"]}

    return evaluate


def train_and_test(policy: BCPolicy, store_path: str | Path, train: TrainConfig, out_dir: str | Path, env: EnvConfig,
                   name: str, n_test: int, n_select: int, n_workers: int = 1, n_videos: int = 2,
                   progress: bool = True) -> dict[str, Any]:
    """Train with selection on the selection seeds (only when `train.eval_every < train.steps` and n_select > 0:
    otherwise the last checkpoint is the only candidate), then test the kept checkpoint on the test seeds.
    Returns train_bc's results plus `test` (the runner's metrics, eval.json and videos in out_dir/test)."""
    out = Path(out_dir)
    if not policy.cfg.cameras:  # the state baseline: roll out without rendering camera observations
        env = replace(env, cameras=())
    select = None
    if n_select > 0 and train.eval_every < train.steps:
        select = rollout_evaluator(env, n_select, SELECTION_SEED_START, out / "select", name, n_workers)
    res = train_bc(policy, store_path, train, out, evaluate=select, progress=progress)
    kept = BCPolicy.load(res["best"])
    runner = RolloutRunner(RunnerConfig(n_episodes=n_test, seed_start=TEST_SEED_START, n_workers=n_workers,
                                        n_videos=n_videos, output_dir=str(out / "test"), env=env))
    res["test"] = runner.run(kept, name=name, progress=progress)
    return res


def _preset(model_config: dict) -> str | None:
    shape = ("n_layers", "d_model", "n_heads", "ffn_hidden")
    for name, preset in MODEL_PRESETS.items():
        if all(model_config.get(k) == preset[k] for k in shape):
            return name
    return None


def bc_record(policy: BCPolicy, store_path: str | Path, train: TrainConfig, res: dict[str, Any],
              name: str) -> dict[str, Any]:
    """The results/ record of one BC run (the run context is added by `toto_robot.results.write_record`)."""
    cfg = policy.cfg
    store = TrajectoryStore.open(store_path)
    env = store.attrs.get("env") or {}
    test = res["test"]
    enc_cfg = read_config(cfg.encoder_checkpoint) if cfg.encoder_checkpoint else {}
    return {
        "task": env.get("task"),
        "policy": name,
        "encoder": cfg.backbone,
        "frozen": cfg.backbone in ("toto", "toto_random"),
        "head": cfg.head,
        "readout": None if not cfg.cameras else ("tokens" if cfg.head == "act" else cfg.readout),
        "position_embedding": cfg.position_embedding if cfg.cameras else None,
        "layer": layer_label(policy.encoder, cfg.encoder_layers) if policy.encoder is not None else None,
        "encoder_window": cfg.encoder_window if policy.encoder is not None else None,
        "n_obs_steps": cfg.n_obs_steps,
        "shift_augment": cfg.shift_augment if cfg.cameras else None,
        "augment_views": cfg.augment_views if policy.encoder is not None else None,
        "preset": _preset(cfg.model_config) if cfg.model_config else None,
        "image_size": cfg.image_size if cfg.cameras else None,
        "cameras": list(cfg.cameras),
        "corpus": enc_cfg.get("corpus"),
        "encoder_checkpoint": cfg.encoder_checkpoint,
        "store": str(store_path),
        "n_demos": store.n_episodes,
        "bc_steps": train.steps,
        "bc_seed": train.seed,
        "best_step": res["best_step"],
        "n_episodes": test["n_episodes"],
        "seeds": [e["seed"] for e in test["episodes"]],
        "success_rate": test["success_rate"],
        "success_ci95": test["success_ci95"],
        "mean_length": test["mean_length"],
        "selection": [r for r in res["history"]["eval"] if "success_rate" in r],
        "val_loss": res["history"]["eval"][-1].get("val_loss") if res["history"]["eval"] else None,
    }
