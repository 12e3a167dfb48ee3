"""Caching frozen-encoder features of a trajectory store, so head training never runs the encoder.

The cache is itself a TrajectoryStore beside the source store (`<store>.features/<key>.zarr`): one key
per camera with the features of every frame (P, C), plus copies of the low-dimensional keys, so one
sampler over the cache yields complete training windows. Features are computed the way the policy
sees them when it acts: each episode streams through a `StreamingEncoder` with the policy's window.
The key hashes the encoder's weights, its read-out layer, the window, the cameras and the source
store's episodes, so changing any of them computes a new cache; an interrupted cache resumes from
its last complete episode (appends are atomic).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.store import TrajectoryStore


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(encoder: TotoEncoder, store: TrajectoryStore, cameras: tuple[str, ...], window: int) -> str:
    record = {"weights": weights_digest(encoder), "layer": encoder.layer, "window": window, "cameras": list(cameras),
              "episode_ends": store.episode_ends.tolist()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def feature_key(camera: str) -> str:
    """Key of a camera's cached features, in the cache store and in training batches."""
    return f"features.{camera}"


def feature_store(store_path: str | Path, encoder: TotoEncoder, cameras: tuple[str, ...], window: int,
                  progress: bool = True) -> Path:
    """Return the path of the feature cache for this store/encoder/window, computing what is missing."""
    store = TrajectoryStore.open(store_path)
    missing = [c for c in cameras if c not in store.image_keys]
    if missing:
        raise ValueError(f"feature cache: cameras {missing} are not image keys of {store_path}; "
                         f"it has {list(store.image_keys)}")
    low_dim = [k for k in store.keys if k not in store.image_keys]
    path = Path(f"{store_path}.features") / f"{cache_key(encoder, store, cameras, window)}.zarr"
    p, c = encoder.cfg.tokens_per_frame, encoder.dim
    if path.exists():
        cache = TrajectoryStore.open(path, mode="a")
    else:
        schema = {feature_key(cam): ((p, c), "float32") for cam in cameras}
        schema.update({k: store.schema[k] for k in low_dim})
        cache = TrajectoryStore.create(path, schema, {"source_store": str(store_path), "window": window,
                                                       "layer": encoder.layer, "cameras": list(cameras)})
    todo = range(cache.n_episodes, store.n_episodes)
    stream = StreamingEncoder(encoder, window=window)
    for i in tqdm(todo, desc="encoder features", disable=not progress or not todo):
        ep = store.episode(i)
        data = {k: ep[k] for k in low_dim}
        stream.reset()
        frames = torch.from_numpy(np.stack([ep[cam] for cam in cameras], axis=1))  # (T, cameras, H, W, 3)
        # the cameras stream side by side as one batch: each keeps its own cache rows
        feats = torch.stack([stream.step(frames[t]).features[:, 0] for t in range(len(frames))], dim=1)
        for j, cam in enumerate(cameras):
            data[feature_key(cam)] = feats[j].numpy().astype(np.float32)  # (T, P, C)
        cache.add_episode(data, store.episode_meta(i))
    return path
