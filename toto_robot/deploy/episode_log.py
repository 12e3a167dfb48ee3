"""The episode log: deployment episodes appended to a `TrajectoryStore` (Zarr).

    store = open_log(path, robot.observation_spec(), robot.action_dim, {"fps": 10})
    log_episode(store, result, task="lift the red cube", source="deploy:toto_sim")

The layout is the one `toto-collect` writes (observation keys + `action`), plus the timing (`t_tick`,
`t_observation`, `t_action`, seconds from the episode start), the policy's raw action, the chunk index
executed and an intervention bitmask per step (`INTERVENTION_BITS`); the episode metadata carries the status,
the list of interventions and the timing summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from toto_robot.deploy.loop import EpisodeResult
from toto_robot.store import TrajectoryStore


def episode_schema(observation_spec: Mapping[str, tuple[tuple[int, ...], str]], action_dim: int
                   ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Store schema for deployment episodes: the observation keys, `action`, and timing / safety keys."""
    schema = {key: (tuple(shape), str(dtype)) for key, (shape, dtype) in observation_spec.items()}
    schema.update({
        "action": ((action_dim,), "float32"),
        "policy_action": ((action_dim,), "float32"),
        "chunk_index": ((1,), "int32"),
        "intervention": ((1,), "int32"),
        "tick": ((1,), "int64"),
        "t_tick": ((1,), "float64"),
        "t_observation": ((1,), "float64"),
        "t_action": ((1,), "float64"),
    })
    return schema


def open_log(path, observation_spec, action_dim: int, attrs: Mapping[str, Any]) -> TrajectoryStore:
    """Open the store at `path` for appending, or create it (safe when several processes start at once);
    an existing store must have the same keys (a ValueError names both schemas)."""
    return TrajectoryStore.open_or_create(path, episode_schema(observation_spec, action_dim), attrs)


def log_episode(store: TrajectoryStore, result: EpisodeResult, *, task: str, source: str,
                seed: int | None = None, success: bool | None = None) -> int | None:
    """Append an episode to the store; returns its index (None when no step was executed)."""
    if result.n_steps == 0:
        return None
    meta = {"task": task, "seed": seed, "success": success, "source": source, "status": result.status,
            "reason": result.reason, "interventions": result.interventions,
            "timing": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in result.timing.items()}}
    return store.add_episode(result.steps, meta)
