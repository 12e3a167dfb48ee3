"""A diverse robosuite pretraining corpus: several tasks, mixed behaviours, randomized looks, one store.

Every episode is one task's scene (tasks minus `holdout_tasks`, whose scenes never enter the corpus, so that
transfer to them is measured honestly), run by one behaviour drawn from the episode's seed with the
configured fractions:
    expert         the task's scripted expert (envs.experts)
    noisy_expert   the same expert with Gaussian noise on its arm actions (`expert_noise`), as toto-collect's
    waypoints      scripted exploration (`WaypointExplorer`): the end effector goes to random targets in the
                   workspace and the gripper opens and closes at random
and rendered by a `RandomizedEnv` whose cameras, lights and textures are redrawn per episode
(envs.randomization). Every episode is kept, successful or not.

The store (toto_robot.store.TrajectoryStore, read by pretrain.data.ZarrSource as it is) holds per step the
camera images `<camera>_image` uint8 (S, S, 3) and `action` float32 (7,); per episode the instruction as
`task`, `task_name`, `behaviour`, `seed`, `success`, `source` and `return`; and in its attributes the tasks,
the held-out tasks, the behaviour fractions and the randomization settings. Appending to a store requires
the same settings.

Seeds count up per task from `seed_start` and stay below EVAL_SEED_START (100000): corpus scenes are never
evaluation scenes. Generation is resumable like toto-collect's: the store remembers each task's next seed, and
running again appends (round robin over the tasks) until every task has `episodes_per_task` episodes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from envs import make_policy
from envs.experts import CLOSE, OPEN, Command, ExpertConfig, ScriptedExpert, reached
from envs.randomization import RandomizationConfig, RandomizedEnv
from envs.robosuite_env import ACTION_DIM, TASKS, EnvConfig, RobosuiteEnv
from envs.runner import EVAL_SEED_START, Policy, rollout
from toto_robot.store import TrajectoryStore

BEHAVIOURS = ("expert", "noisy_expert", "waypoints")
CORPUS_KIND = "robosuite-corpus"
# Store attributes an append must match (everything but the per-task next seeds).
_MATCHING_ATTRS = ("kind", "env", "holdout_tasks", "tasks", "behaviours", "expert_noise", "explorer",
                   "randomization", "seed_start")


@dataclass
class ExplorerConfig:
    """Random end-effector waypoints, as offsets (m) from where the end effector starts the episode."""

    low: tuple[float, float, float] = (-0.15, -0.25, -0.17)  # the Panda starts ~0.22 m above the table top
    high: tuple[float, float, float] = (0.20, 0.25, 0.10)
    waypoint_steps: int = 40  # steps before moving on toward a new target if this one is not reached
    tolerance: float = 0.02  # m: a target this close is reached
    max_yaw: float = 1.2  # rad: each waypoint turns the gripper about the vertical by up to this much
    close_probability: float = 0.5  # chance that the gripper is closed on the way to a waypoint
    min_speed: float = 0.3  # each waypoint's speed is uniform in [min_speed, 1] of the expert's max speed

    def __post_init__(self) -> None:
        self.low, self.high = tuple(float(v) for v in self.low), tuple(float(v) for v in self.high)
        if len(self.low) != 3 or len(self.high) != 3 or not all(lo < hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"explorer.low / explorer.high: expected three offsets each, low < high, "
                             f"got {list(self.low)} and {list(self.high)}")
        for name in ("waypoint_steps", "tolerance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"explorer.{name}: must be positive, got {getattr(self, name)}")
        for name in ("close_probability", "min_speed"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"explorer.{name}: must be in [0, 1], got {getattr(self, name)}")
        if self.max_yaw < 0:
            raise ValueError(f"explorer.max_yaw: must be >= 0, got {self.max_yaw}")


@dataclass
class Waypoint:
    pos: np.ndarray  # world frame (m)
    yaw: float
    gripper: float  # OPEN or CLOSE
    speed: float
    start: int  # the explorer's step count when it was drawn


class WaypointExplorer(ScriptedExpert):
    """Scripted exploration: proportional control (the experts' pose controller, through the normalized OSC
    action) toward random targets in a box around the end effector's starting position, each with a random
    gripper yaw, speed and gripper state; a new target when this one is reached or after `waypoint_steps`.
    Reads `robot0_eef_pos` from the privileged state, so the runner passes it; seeded through `reset(seed)`."""

    phases = ("explore",)

    def __init__(self, config: ExplorerConfig | None = None):
        self.explorer = config or ExplorerConfig()
        super().__init__(ExpertConfig())

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self.home: np.ndarray | None = None
        self.waypoint: Waypoint | None = None

    def command(self, phase: str, s: dict[str, np.ndarray]) -> Command:
        eef = s["robot0_eef_pos"]
        if self.home is None:
            self.home = eef.copy()
        wp = self.waypoint
        if wp is None or reached(eef, wp.pos, self.explorer.tolerance) \
                or self.phase_steps - wp.start >= self.explorer.waypoint_steps:
            wp = self.waypoint = self._draw()
        return Command(wp.pos, wp.yaw, wp.gripper, done=False, speed=wp.speed)

    def _draw(self) -> Waypoint:
        cfg, rng = self.explorer, self.rng
        return Waypoint(
            pos=self.home + rng.uniform(cfg.low, cfg.high),
            yaw=float(rng.uniform(-cfg.max_yaw, cfg.max_yaw)),
            gripper=CLOSE if rng.random() < cfg.close_probability else OPEN,
            speed=float(rng.uniform(cfg.min_speed, 1.0)),
            start=self.phase_steps,
        )


@dataclass
class CorpusConfig:
    tasks: tuple[str, ...] = tuple(TASKS)
    holdout_tasks: tuple[str, ...] = ("PickPlaceCan",)  # never in the corpus (recorded in the store)
    episodes_per_task: int = 4  # the store must hold this many of each corpus task; re-running appends
    behaviours: dict[str, float] = field(
        default_factory=lambda: {"expert": 0.3, "noisy_expert": 0.3, "waypoints": 0.4})  # fractions, sum 1
    expert_noise: float = 0.3  # std of the noisy expert's arm-action noise (normalized units)
    cameras: tuple[str, ...] = ("agentview", "robot0_eye_in_hand")
    image_size: int = 64
    horizon: int | None = None  # None: each task's default (TASKS: Lift 200, Square 400, others 300)
    seed_start: int = 50_000  # first seed of each task; the corpus stays below the evaluation seeds (100000)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    explorer: ExplorerConfig = field(default_factory=ExplorerConfig)

    def __post_init__(self) -> None:
        for name in ("tasks", "holdout_tasks", "cameras"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, str) else tuple(value))  # `tasks=Lift` is one task
        if isinstance(self.randomization, dict):  # from a config file
            self.randomization = RandomizationConfig(**self.randomization)
        if isinstance(self.explorer, dict):
            self.explorer = ExplorerConfig(**self.explorer)
        for name in ("tasks", "holdout_tasks"):
            for task in getattr(self, name):
                if task not in TASKS:
                    raise ValueError(f"{name}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name}: duplicates in {list(getattr(self, name))}")
        if not self.corpus_tasks:
            raise ValueError(f"holdout_tasks: {list(self.holdout_tasks)} holds out every task in tasks "
                             f"{list(self.tasks)}; nothing is left for the corpus")
        unknown = [b for b in self.behaviours if b not in BEHAVIOURS]
        if unknown:
            raise ValueError(f"behaviours: unknown {unknown}; valid behaviours: {', '.join(BEHAVIOURS)}")
        self.behaviours = {b: float(self.behaviours.get(b, 0.0)) for b in BEHAVIOURS}  # absent: a fraction of 0
        if any(f < 0 for f in self.behaviours.values()):
            raise ValueError(f"behaviours: fractions must be >= 0, got {self.behaviours}")
        total = sum(self.behaviours.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"behaviours: fractions must sum to 1, got {total:g} ({self.behaviours})")
        if self.expert_noise < 0:
            raise ValueError(f"expert_noise: must be >= 0, got {self.expert_noise}")
        if self.behaviours["noisy_expert"] > 0 and self.expert_noise == 0:
            raise ValueError("expert_noise: noisy_expert episodes need expert_noise > 0, got 0")
        if not self.cameras:
            raise ValueError("cameras: the corpus is camera images; expected at least one camera, got none")
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task: must be >= 1, got {self.episodes_per_task}")
        if not 0 <= self.seed_start < EVAL_SEED_START:
            raise ValueError(f"seed_start: must be in [0, {EVAL_SEED_START}) (higher seeds are for evaluation), "
                             f"got {self.seed_start}")
        if self.seed_start + self.episodes_per_task > EVAL_SEED_START:
            raise ValueError(f"seed_start: seeds {self.seed_start}..{self.seed_start + self.episodes_per_task - 1} "
                             f"would reach {EVAL_SEED_START}, where evaluation seeds start")
        for task in self.corpus_tasks:
            self.env_config(task)  # checks the cameras against every task's scene, the image size, the horizon

    @property
    def corpus_tasks(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if t not in self.holdout_tasks)

    def env_config(self, task: str) -> EnvConfig:
        return EnvConfig(task=task, cameras=self.cameras, image_size=self.image_size, horizon=self.horizon)

    def store_attrs(self) -> dict[str, Any]:
        env = self.env_config(self.corpus_tasks[0])
        attrs = {
            "kind": CORPUS_KIND,
            "env": {"cameras": list(self.cameras), "image_size": self.image_size, "horizon": self.horizon,
                    "control_freq": env.control_freq, "model_seed": env.model_seed},
            "fps": env.control_freq,
            "tasks": list(self.corpus_tasks),
            "holdout_tasks": list(self.holdout_tasks),
            "instructions": {t: TASKS[t].instruction for t in self.corpus_tasks},
            "behaviours": self.behaviours,
            "expert_noise": self.expert_noise,
            "explorer": asdict(self.explorer),
            "randomization": asdict(self.randomization),
            "seed_start": self.seed_start,
        }
        return json.loads(json.dumps(attrs))  # tuples as lists, as the store gives them back


def behaviour_of(seed: int, task: str, fractions: dict[str, float]) -> str:
    """The behaviour of episode `seed` of `task`: a draw with probabilities `fractions`, a function of the seed
    alone (resuming, or rebuilding the store, gives every seed the same behaviour)."""
    names = [b for b in BEHAVIOURS if fractions.get(b, 0.0) > 0]
    p = np.array([fractions[b] for b in names])
    rng = np.random.default_rng([seed, list(TASKS).index(task)])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def corpus_schema(config: CorpusConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """Camera images and actions: what pretraining reads (and what a future action-conditioned model could)."""
    spaces = RobosuiteEnv.observation_spaces(config.env_config(config.corpus_tasks[0]))
    schema = {key: (space.shape, space.dtype.name) for key, space in spaces.items() if key.endswith("_image")}
    schema["action"] = ((ACTION_DIM,), "float32")
    return schema


def open_or_create(path: Path, config: CorpusConfig) -> TrajectoryStore:
    """The corpus store, created when missing (safe when several processes start on one new path: the store's
    own open_or_create), then checked to be a corpus built with these settings."""
    attrs = config.store_attrs()
    next_seed = {task: config.seed_start for task in config.corpus_tasks}
    store = TrajectoryStore.open_or_create(path, corpus_schema(config), {**attrs, "next_seed": next_seed})
    stored = store.attrs
    if stored.get("kind") != CORPUS_KIND:  # a store toto-corpus did not write has no "kind"
        raise ValueError(f"{path} is not a toto-corpus store (it has no kind {CORPUS_KIND!r}): use another output")
    for key in _MATCHING_ATTRS:
        if stored[key] != attrs[key]:
            raise ValueError(f"{path} was built with {key}={stored[key]}, not {attrs[key]}: use another output")
    return store


def resume_seeds(store: TrajectoryStore, tasks: tuple[str, ...]) -> dict[str, int]:
    """Each task's first seed not yet used: past its `next_seed` and past each of its stored episodes' seeds
    (a kill between an episode's commit and the `next_seed` update leaves `next_seed` one behind)."""
    seeds = dict(store.attrs["next_seed"])
    for i in range(store.n_episodes):
        meta = store.episode_meta(i)
        seeds[meta["task_name"]] = max(seeds[meta["task_name"]], meta["seed"] + 1)
    return {task: seeds[task] for task in tasks}


def corpus_policies(task: str, config: CorpusConfig) -> dict[str, Policy]:
    return {
        "expert": make_policy("expert", task),
        "noisy_expert": make_policy("expert", task, config.expert_noise),
        "waypoints": WaypointExplorer(config.explorer),
    }


@dataclass
class CorpusRun:
    """What one `build_corpus` call did."""

    store: TrajectoryStore
    episodes: int  # appended by this run
    steps: int  # control steps of those episodes (frames per camera)
    seconds: float

    @property
    def frames_per_second(self) -> float:
        """Camera frames rendered and stored per second of this run (every camera counts)."""
        n_cameras = len(self.store.image_keys)
        return self.steps * n_cameras / self.seconds if self.seconds > 0 else 0.0


def build_corpus(path: str | Path, config: CorpusConfig, progress: bool = True) -> CorpusRun:
    """Append episodes to the corpus store at `path` (created if missing) until each corpus task has
    `config.episodes_per_task`."""
    path = Path(path)
    start = time.perf_counter()
    store = open_or_create(path, config)
    tasks = config.corpus_tasks
    counts = {task: 0 for task in tasks}
    for i in range(store.n_episodes):
        counts[store.episode_meta(i)["task_name"]] += 1
    missing = {task: max(config.episodes_per_task - n, 0) for task, n in counts.items()}
    next_seed = resume_seeds(store, tasks)
    for task in tasks:
        if next_seed[task] + missing[task] > EVAL_SEED_START:
            raise ValueError(f"corpus seeds of {task} would reach {EVAL_SEED_START}, where evaluation seeds start "
                             f"(next seed {next_seed[task]}, {missing[task]} more episodes)")
    keys = tuple(corpus_schema(config))
    envs: dict[str, RandomizedEnv] = {}
    policies: dict[str, dict[str, Policy]] = {}
    total = len(tasks) * config.episodes_per_task
    bar = tqdm(total=total, initial=total - sum(missing.values()), desc="corpus", disable=not progress)
    episodes, steps = 0, 0
    try:
        while any(missing.values()):
            for task in tasks:  # round robin: an interrupted run leaves the tasks balanced
                if not missing[task]:
                    continue
                if task not in envs:
                    envs[task] = RandomizedEnv(randomization=config.randomization, **asdict(config.env_config(task)))
                    policies[task] = corpus_policies(task, config)
                seed = next_seed[task]
                behaviour = behaviour_of(seed, task, config.behaviours)
                episode = rollout(envs[task], policies[task][behaviour], seed, record=True)
                meta = {"task": TASKS[task].instruction, "task_name": task, "behaviour": behaviour, "seed": seed,
                        "success": episode.success, "source": f"toto-corpus/{behaviour}", "return": episode.ret}
                store.add_episode({key: episode.steps[key] for key in keys}, meta)
                store.update_attrs({"next_seed": {**store.attrs["next_seed"], task: seed + 1}})
                next_seed[task], missing[task] = seed + 1, missing[task] - 1
                episodes, steps = episodes + 1, steps + episode.length
                bar.update(1)
                bar.set_postfix(task=task, behaviour=behaviour,
                                steps_per_s=f"{steps / (time.perf_counter() - start):.1f}")
    finally:
        for env in envs.values():
            env.close()
        bar.close()
    return CorpusRun(store, episodes, steps, time.perf_counter() - start)
