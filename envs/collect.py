"""Demonstration collection: roll a policy out and append its episodes to a Zarr trajectory store.

Stored per step: every observation key of the env (camera images uint8 (H, W, 3), proprioception float32),
the privileged object state (`object`, `object_pos`: float32, never observed by image policies; the probes and
the `state` baseline read it), `action` float32 (7,) in [-1, 1] and `reward` float32 (1,). Per episode (store metadata): task instruction,
seed, success, source, return. Collection is resumable: the store remembers the next seed to try, and running
again with the same output appends until the target count is stored.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from envs.robosuite_env import ACTION_DIM, OBJECT_KEYS, ROBOT_TYPE, TASKS, EnvConfig, RobosuiteEnv
from envs.runner import EVAL_SEED_START, Policy, stream_episodes
from toto_robot.store import TrajectoryStore

# Store attributes that must match when appending to an existing store.
_MATCHING_ENV_FIELDS = ("task", "cameras", "image_size", "control_freq", "horizon", "reward_shaping", "model_seed")


def store_schema(env_config: EnvConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Keys, shapes (without time) and dtypes of a collection store for this env configuration."""
    spaces = RobosuiteEnv.observation_spaces(env_config)
    spaces |= RobosuiteEnv.object_state_spaces(env_config)
    schema = {key: (space.shape, space.dtype.name) for key, space in spaces.items()}
    schema["action"] = ((ACTION_DIM,), "float32")
    schema["reward"] = ((1,), "float32")
    return schema


def open_or_create(path: Path, env_config: EnvConfig, source: str, seed_start: int) -> TrajectoryStore:
    """The collection store at `path`, created if missing (safe when several collectors start at once);
    an existing one must hold the same keys and env settings."""
    env_attrs = {k: v for k, v in asdict(env_config).items() if k in _MATCHING_ENV_FIELDS}
    env_attrs["cameras"] = list(env_attrs["cameras"])
    attrs = {
        "env": env_attrs,
        "fps": env_config.control_freq,
        "source": source,
        "instruction": TASKS[env_config.task].instruction,
        "robot_type": ROBOT_TYPE,  # a LeRobot export's robot_type
        "next_seed": seed_start,
    }

    def check(store: TrajectoryStore) -> None:
        stored = store.attrs.get("env")  # a store not written here has no "env" attribute
        if stored != env_attrs:
            raise ValueError(f"{path} was collected with env settings {stored}, not {env_attrs}: use another output")
        check_object_state(store, path)

    if path.exists():  # other settings or an older store: say so, rather than that the schemas differ
        check(TrajectoryStore.open(path))
    store = TrajectoryStore.open_or_create(path, store_schema(env_config), attrs)
    check(store)
    return store


def check_object_state(store: TrajectoryStore, path: str | Path) -> None:
    """Stores collected before object state was recorded lack its keys: say so, never mix the two kinds."""
    missing = [k for k in OBJECT_KEYS if k not in store.keys]
    if missing:
        raise ValueError(f"{path}: expected the object-state keys {list(OBJECT_KEYS)}, missing {missing} (the store "
                         "was collected by an older version): collect into a new output")


def resume_seed(store: TrajectoryStore) -> int:
    """The first seed not yet tried: past `next_seed` and past every stored episode's seed.

    `next_seed` is written after each episode's commit, so a kill in between leaves it one behind the
    episode just stored; the stored seeds cover that gap.
    """
    seeds = [store.episode_meta(i)["seed"] for i in range(store.n_episodes)]
    return max([int(store.attrs["next_seed"])] + [s + 1 for s in seeds if s is not None])


def collect(
    path: str | Path,
    policy: Policy,
    env_config: EnvConfig,
    n_episodes: int,
    *,
    keep_failed: bool = False,
    n_workers: int = 1,
    seed_start: int = 0,
    max_attempts: int | None = None,
    source: str = "scripted",
    progress: bool = True,
) -> TrajectoryStore:
    """Append episodes of `policy` to the store at `path` (created if missing) until it holds `n_episodes`.

    Seeds count up from `seed_start` (or from where an earlier run stopped) and stay below EVAL_SEED_START.
    Failed episodes are skipped unless `keep_failed`. Gives up with a ValueError after `max_attempts`
    episodes in this run (default: 2 * missing + 10).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes: must be >= 1, got {n_episodes}")
    if not 0 <= seed_start < EVAL_SEED_START:
        raise ValueError(f"seed_start: must be in [0, {EVAL_SEED_START}) (higher seeds are for evaluation)")
    path = Path(path)
    store = open_or_create(path, env_config, source, seed_start)
    missing = n_episodes - store.n_episodes
    if missing <= 0:
        return store
    max_attempts = 2 * missing + 10 if max_attempts is None else max_attempts
    next_seed = resume_seed(store)
    if next_seed + max_attempts > EVAL_SEED_START:
        raise ValueError(f"collection seeds would reach {EVAL_SEED_START}, where evaluation seeds start")
    instruction = TASKS[env_config.task].instruction
    attempts = 0
    bar = tqdm(total=n_episodes, initial=store.n_episodes, desc=f"collect {env_config.task}", disable=not progress)
    episodes = stream_episodes(env_config, policy, itertools.count(next_seed), n_workers=n_workers, record=True)
    try:
        for episode in episodes:
            attempts += 1
            if episode.success or keep_failed:
                steps = dict(episode.steps)
                steps["reward"] = steps["reward"].reshape(-1, 1)
                meta = {"task": instruction, "seed": episode.seed, "success": episode.success, "source": source,
                        "return": episode.ret}
                store.add_episode(steps, meta)
                bar.update(1)
            store.update_attrs({"next_seed": episode.seed + 1})
            bar.set_postfix(tried=attempts)
            if store.n_episodes >= n_episodes:
                break
            if attempts >= max_attempts:
                raise ValueError(
                    f"gave up after {attempts} episodes with {store.n_episodes}/{n_episodes} stored: the policy "
                    "succeeds too rarely (pass keep_failed, or a larger max_attempts)"
                )
    finally:
        episodes.close()
        bar.close()
    return store
