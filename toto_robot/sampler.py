"""Windows of consecutive steps from a :class:`~toto_robot.store.TrajectoryStore`, as a torch Dataset.

The convention is diffusion_policy's ``SequenceSampler``: a window is ``S = max(horizons)``
consecutive steps of one episode starting at ``s``, with ``s`` running from ``-pad_before`` to
``T - S + pad_after`` for an episode of ``T`` steps. Each key takes the first ``horizons[key]``
steps of the window, so with ``{"agentview_image": 2, "action": 16}`` the image covers steps
``s, s+1`` and the action ``s .. s+15``. Steps before the start or past the end of the episode
repeat its first or last frame; a window never crosses into another episode.

Example (diffusion_policy's robosuite image setting: 2 observation steps, 16 action steps, of
which 8 are executed)::

    train_ids, val_ids = split_episodes(store.n_episodes, val_ratio=0.1, seed=0)
    train = WindowDataset(store, {"agentview_image": 2, "robot0_eef_pos": 2, "action": 16},
                          pad_before=1, pad_after=7, episodes=train_ids)
    batch = train[0]   # {"agentview_image": uint8 (2, H, W, 3), ..., "action": float32 (16, 7)}
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toto_robot.store import TrajectoryStore


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into sorted (train, validation) arrays, deterministically from ``seed``.

    As in diffusion_policy's ``get_val_mask``: with ``0 < val_ratio`` there is at least one
    validation episode and at least one training episode.
    """
    if not 0 <= val_ratio < 1:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if n_episodes < 0:
        raise ValueError(f"n_episodes must be >= 0, got {n_episodes}")
    ids = np.arange(n_episodes)
    if val_ratio == 0 or n_episodes == 0:
        return ids, ids[:0]
    if n_episodes < 2:
        raise ValueError(f"a validation split needs at least 2 episodes, got {n_episodes}")
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    val = np.sort(np.random.default_rng(seed).choice(n_episodes, size=n_val, replace=False))
    return np.setdiff1d(ids, val), val


class WindowDataset(torch.utils.data.Dataset):
    """Windows over some episodes of a store; items are ``{key: tensor (horizons[key], *shape)}``.

    Args:
        store: a store or the path of one (opened read-only).
        horizons: steps per key, e.g. ``{"agentview_image": 2, "action": 16}``; keys not named
            are not read.
        pad_before: how many steps a window may start before an episode (< max horizon).
        pad_after: how many steps a window may run past an episode's end (< max horizon).
        episodes: episode indices to draw windows from (default: all committed episodes).
        in_memory: which keys to load into RAM up front: ``"low_dim"`` (default; everything but
            images), ``"all"``, ``"none"`` (read every window from zarr), or a collection of key names
            (the others are read from zarr window by window, e.g. a feature cache too large for RAM).

    Tensors keep the store's dtypes (uint8 images, float32 low-dim); converting and
    normalizing is the policy's job (``stats`` gives the statistics saved in the store).
    """

    def __init__(
        self,
        store: TrajectoryStore | str | os.PathLike,
        horizons: Mapping[str, int],
        *,
        pad_before: int = 0,
        pad_after: int = 0,
        episodes: Sequence[int] | np.ndarray | None = None,
        in_memory: Literal["low_dim", "all", "none"] | Collection[str] = "low_dim",
    ):
        if not isinstance(store, TrajectoryStore):
            store = TrajectoryStore.open(store, mode="r")
        if not horizons:
            raise ValueError("horizons must name at least one key, got an empty mapping")
        unknown = sorted(set(horizons) - set(store.keys))
        if unknown:
            raise ValueError(f"horizons name keys {unknown} that the store lacks; it has {list(store.keys)}")
        for key, h in horizons.items():
            if not isinstance(h, int | np.integer) or h < 1:
                raise ValueError(f"horizons[{key!r}] must be a positive int, got {h!r}")
        length = max(int(h) for h in horizons.values())
        for name, pad in (("pad_before", pad_before), ("pad_after", pad_after)):
            if not isinstance(pad, int | np.integer) or not 0 <= pad < length:
                raise ValueError(f"{name} must be an int in [0, {length - 1}] (max horizon - 1), got {pad!r}")
        if isinstance(in_memory, str):
            if in_memory not in ("low_dim", "all", "none"):
                raise ValueError(f"in_memory must be 'low_dim', 'all', 'none' or a collection of keys, got {in_memory!r}")
        else:
            in_memory = frozenset(in_memory)
            if not in_memory <= set(horizons):
                raise ValueError(f"in_memory names keys {sorted(in_memory - set(horizons))} that horizons does not "
                                 f"read; it reads {list(horizons)}")
        if episodes is None:
            episodes = np.arange(store.n_episodes)
        episodes = np.asarray(episodes, dtype=np.int64).reshape(-1)
        bad = episodes[(episodes < 0) | (episodes >= store.n_episodes)]
        if len(bad) or len(np.unique(episodes)) != len(episodes):
            raise ValueError(
                f"episodes must be distinct indices in [0, {store.n_episodes}), got {episodes.tolist()}"
            )

        self.horizons = {key: int(h) for key, h in horizons.items()}
        self.sequence_length = length
        self.pad_before = int(pad_before)
        self.pad_after = int(pad_after)
        self.episodes = episodes
        self.in_memory = in_memory
        self._path = Path(store.path)
        self._n_steps = store.n_steps

        # One row per window: the episode's first step, its length, and the window start s.
        ends = store.episode_ends
        starts_of_episode = np.concatenate([[0], ends[:-1]])
        rows = []
        for ep in episodes:
            t = int(ends[ep] - starts_of_episode[ep])
            s = np.arange(-self.pad_before, t - length + self.pad_after + 1)
            columns = [np.full_like(s, ep), np.full_like(s, starts_of_episode[ep]), np.full_like(s, t), s]
            rows.append(np.stack(columns, axis=1))
        self._windows = np.concatenate(rows) if rows else np.zeros((0, 4), np.int64)  # (N, 4)

        self._attach(store)

    def _attach(self, store: TrajectoryStore) -> None:
        self._store = store
        self._memory: dict[str, np.ndarray] = {}
        images = set(store.image_keys)
        for key in self.horizons:
            if (self.in_memory == "all" or (self.in_memory == "low_dim" and key not in images)
                    or (not isinstance(self.in_memory, str) and key in self.in_memory)):
                self._memory[key] = store.read(key, 0, self._n_steps)

    def __len__(self) -> int:
        return len(self._windows)

    def window(self, i: int) -> tuple[int, int]:
        """``(episode, s)`` of window ``i``: its episode index and its start step (may be < 0)."""
        ep, _, _, s = self._windows[i]
        return int(ep), int(s)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        _, first, t, s = (int(v) for v in self._windows[i])
        item = {}
        for key, h in self.horizons.items():
            # Edge padding: clip step indices into the episode, repeating its first/last frame.
            steps = np.clip(np.arange(s, s + h), 0, t - 1)  # (h,)
            if key in self._memory:
                value = self._memory[key][first + steps]
            else:
                # One contiguous read of steps[0] .. steps[-1], then the padded gather.
                lo, top = int(steps[0]), int(steps[-1]) + 1
                value = self._store.read(key, first + lo, first + top)[steps - lo]
            item[key] = torch.from_numpy(np.ascontiguousarray(value))
        return item

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The store's saved normalization statistics for this dataset's keys."""
        stats = self._store.stats
        return {key: stats[key] for key in self.horizons if key in stats}

    # DataLoader workers receive a pickled copy: reopen the store there instead of pickling zarr handles.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_store"]
        if self.in_memory != "all":
            state["_memory"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        store = TrajectoryStore.open(self._path, mode="r")
        if self._memory is None:
            self._attach(store)
        else:
            self._store = store


def train_val_datasets(
    store: TrajectoryStore | str | os.PathLike,
    horizons: Mapping[str, int],
    *,
    val_ratio: float,
    seed: int = 0,
    **kwargs,
) -> tuple[WindowDataset, WindowDataset]:
    """Training and validation datasets over disjoint episodes (see :func:`split_episodes`)."""
    if not isinstance(store, TrajectoryStore):
        store = TrajectoryStore.open(store, mode="r")
    train_ids, val_ids = split_episodes(store.n_episodes, val_ratio, seed)
    return (
        WindowDataset(store, horizons, episodes=train_ids, **kwargs),
        WindowDataset(store, horizons, episodes=val_ids, **kwargs),
    )
