"""Roll policies out in the robosuite environments: seeded episodes, parallel workers, metrics, videos.

A policy is any object with `reset()` and `select_action(obs) -> action` (normalized, shape (7,)).
- If `reset` takes a `seed` argument it gets the episode's seed (scripted experts' noise, the random policy).
- If `policy.uses_privileged_state` is True, `obs["privileged"]` carries the env's `privileged_state()`.

Workers are spawned processes (never forked: OpenGL contexts do not survive a fork). Each builds its env once
and receives the policy by pickling, so a policy must be picklable (plain objects and torch modules are).
Episodes come back in seed order whatever order the workers finish in, so results are reproducible.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from envs.robosuite_env import ACTION_DIM, OBJECT_KEYS, EnvConfig, RobosuiteEnv
from toto_robot.results import wilson_interval
from toto_robot.video import write_mp4

# Seeds at or above EVAL_SEED_START are kept for evaluation; demonstrations are collected below it.
# Evaluation seeds come in two disjoint ranges: reported success rates use the test seeds (100000, 100001, ...),
# and choosing a checkpoint during training uses the selection seeds (200000, ...), so the reported number is
# never the one a checkpoint was picked on.
EVAL_SEED_START = 100_000
TEST_SEED_START = EVAL_SEED_START
SELECTION_SEED_START = 200_000


class Policy(Protocol):
    def reset(self) -> None: ...

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class Episode:
    seed: int
    success: bool
    ret: float  # sum of rewards
    length: int  # steps taken
    seconds: float  # wall time of the rollout
    steps: dict[str, np.ndarray] | None = None  # recorded observations, actions, rewards; time first
    video: str | None = None  # path of the episode's mp4

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "steps"}


def reset_policy(policy: Policy, seed: int) -> None:
    if "seed" in inspect.signature(policy.reset).parameters:
        policy.reset(seed=seed)
    else:
        policy.reset()


def rollout(
    env: RobosuiteEnv, policy: Policy, seed: int, record: bool = False, video_path: str | Path | None = None
) -> Episode:
    """One episode of `policy` in `env` from `seed`. `record` keeps every step's observation, privileged object
    state (`env.object_state()`), action and reward (observation t is the one the action t was chosen from);
    `video_path` writes render() frames as mp4."""
    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    reset_policy(policy, seed)
    privileged = bool(getattr(policy, "uses_privileged_state", False))
    steps: dict[str, list] = {key: [] for key in (*obs, *OBJECT_KEYS, "action", "reward")} if record else {}
    frames = [env.render()] if video_path is not None else []
    ret, terminated, truncated, t = 0.0, False, False, 0
    while not (terminated or truncated):
        object_state = env.object_state() if record else {}  # before the step, as the observation
        policy_obs = {**obs, "privileged": env.privileged_state()} if privileged else obs
        action = np.asarray(policy.select_action(policy_obs), dtype=np.float32)
        if action.size != ACTION_DIM:
            raise ValueError(f"policy returned an action of shape {action.shape}; expected ({ACTION_DIM},)")
        action = action.reshape(ACTION_DIM)
        next_obs, reward, terminated, truncated, info = env.step(action)
        if record:
            for key, value in (obs | object_state).items():
                steps[key].append(value)
            steps["action"].append(action)
            steps["reward"].append(np.float32(reward))
        if video_path is not None:
            frames.append(env.render())
        obs, ret, t = next_obs, ret + reward, t + 1
    if video_path is not None:
        write_mp4(video_path, frames, fps=env.config.control_freq)
    return Episode(
        seed=seed,
        success=bool(info["success"]),
        ret=float(ret),
        length=t,
        seconds=time.perf_counter() - start,
        steps={k: np.stack(v) for k, v in steps.items()} if record else None,
        video=str(video_path) if video_path is not None else None,
    )


# -- worker processes -----------------------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(env_kwargs: dict, policy: Policy, video: bool) -> None:
    if "torch" in sys.modules:  # one intra-op thread per worker: the workers already fill the cores
        sys.modules["torch"].set_num_threads(1)
    _worker["policy"] = policy
    _worker["env"] = RobosuiteEnv(render_mode="rgb_array" if video else None, **env_kwargs)


def _run_in_worker(seed: int, record: bool, video_path: str | None) -> Episode:
    return rollout(_worker["env"], _worker["policy"], seed, record=record, video_path=video_path)


@dataclass
class RunnerConfig:
    n_episodes: int = 10
    seed_start: int = EVAL_SEED_START
    n_workers: int = 1  # 1: roll out in this process
    n_videos: int = 0  # mp4s of the first episodes (needs output_dir)
    output_dir: str | None = None  # eval.json and videos/ go here; None: nothing written
    env: EnvConfig = field(default_factory=EnvConfig)

    def __post_init__(self) -> None:
        if isinstance(self.env, dict):
            self.env = EnvConfig(**self.env)
        for name in ("n_episodes", "n_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.seed_start < EVAL_SEED_START:
            raise ValueError(
                f"seed_start: evaluation seeds start at {EVAL_SEED_START} (lower ones are collection seeds), "
                f"got {self.seed_start}"
            )
        if self.seed_start < SELECTION_SEED_START < self.seed_start + self.n_episodes:
            raise ValueError(
                f"n_episodes: test seeds {self.seed_start}..{self.seed_start + self.n_episodes - 1} would reach the "
                f"selection seeds at {SELECTION_SEED_START}; expected at most {SELECTION_SEED_START - self.seed_start}"
            )
        if self.n_videos < 0:
            raise ValueError(f"n_videos: must be >= 0, got {self.n_videos}")
        if self.n_videos and self.output_dir is None:
            raise ValueError("n_videos > 0 needs an output_dir to write the videos to")
        if self.n_videos and self.env.video_size % 2:
            raise ValueError(f"env.video_size: must be even for H.264 videos, got {self.env.video_size}")


class RolloutRunner:
    """Evaluates a policy over `n_episodes` seeded episodes: `run(policy) -> metrics`.

    Seeds are seed_start, seed_start + 1, ...; the default start keeps them disjoint from collection seeds.
    With an output_dir, writes `eval.json` (metrics and per-episode results) and `videos/seed_<seed>.mp4`.
    """

    def __init__(self, config: RunnerConfig):
        self.config = config

    def run(self, policy: Policy, name: str | None = None, progress: bool = True) -> dict[str, Any]:
        cfg = self.config
        seeds = range(cfg.seed_start, cfg.seed_start + cfg.n_episodes)
        start = time.perf_counter()
        stream = stream_episodes(
            cfg.env, policy, seeds, n_workers=cfg.n_workers, record=False,
            video_dir=Path(cfg.output_dir) / "videos" if cfg.n_videos else None, n_videos=cfg.n_videos,
        )
        episodes = list(tqdm(stream, total=cfg.n_episodes, desc=f"eval {cfg.env.task}", disable=not progress))
        seconds = time.perf_counter() - start
        metrics = summarize(episodes, seconds)
        metrics = {
            "task": cfg.env.task,
            "policy": name or type(policy).__name__,
            **metrics,
            "n_workers": cfg.n_workers,
            "config": _jsonable(asdict(cfg)),
            "episodes": [e.summary() for e in episodes],
        }
        if cfg.output_dir is not None:
            path = Path(cfg.output_dir) / "eval.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=2))
            metrics["json"] = str(path)
        return metrics


def summarize(episodes: list[Episode], seconds: float) -> dict[str, Any]:
    lengths = np.array([e.length for e in episodes])
    successes = sum(e.success for e in episodes)
    return {
        "n_episodes": len(episodes),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "success_ci95": list(wilson_interval(successes, len(episodes))),
        "mean_return": float(np.mean([e.ret for e in episodes])),
        "mean_length": float(lengths.mean()),
        "seconds": seconds,
        "steps_per_second": float(lengths.sum() / seconds),
    }


def stream_episodes(
    env_config: EnvConfig,
    policy: Policy,
    seeds: Iterable[int],
    n_workers: int = 1,
    record: bool = False,
    video_dir: Path | None = None,
    n_videos: int = 0,
) -> Iterator[Episode]:
    """Episodes of `policy`, one per seed, yielded in seed order. `seeds` may be endless: it is read only as
    far as the consumer goes (a few episodes ahead per worker), and closing the generator stops the workers."""
    env_kwargs = asdict(env_config)
    video = video_dir is not None and n_videos > 0
    numbered = ((i, seed) for i, seed in enumerate(seeds))

    def video_path(i: int, seed: int) -> str | None:
        return str(video_dir / f"seed_{seed}.mp4") if video and i < n_videos else None

    if n_workers == 1:
        env = RobosuiteEnv(render_mode="rgb_array" if video else None, **env_kwargs)
        try:
            for i, seed in numbered:
                yield rollout(env, policy, seed, record=record, video_path=video_path(i, seed))
        finally:
            env.close()
        return

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_workers, context, initializer=_init_worker, initargs=(env_kwargs, policy, video)) as pool:
        pending: deque[Future] = deque()
        try:
            for i, seed in numbered:
                pending.append(pool.submit(_run_in_worker, seed, record, video_path(i, seed)))
                if len(pending) >= 2 * n_workers:  # keep every worker busy, the next episode queued
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
