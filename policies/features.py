"""Caching frozen-encoder features of a trajectory store, so head training never runs the encoder.

The cache is itself a TrajectoryStore beside the source store (`<store>.features/<key>.zarr`): one key
per camera with the features of every frame (P, C), plus copies of the low-dimensional keys, so one
sampler over the cache yields complete training windows. Features are computed the way the policy
sees them when it acts: each episode streams through a `StreamingEncoder` with the policy's window.
The key hashes the encoder's weights, its read-out layer, the window, the cameras and the source
store's episodes, so changing any of them computes a new cache; an interrupted cache resumes from
its last complete episode (appends are atomic). For random-shift augmentation the cache can hold several
views of every frame (view 0 unshifted, the others shifted at random; `feature_store(views=, shift=)`),
in float32 or float16.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.frames import shift_frames
from toto_robot.store import TrajectoryStore


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(encoder: TotoEncoder, store: TrajectoryStore, cameras: tuple[str, ...], window: int,
              views: int = 1, shift: int = 0, dtype: str = "float32") -> str:
    record = {"weights": weights_digest(encoder), "layer": encoder.layer, "window": window, "cameras": list(cameras),
              "episode_ends": store.episode_ends.tolist()}
    if (views, shift, dtype) != (1, 0, "float32"):  # the plain cache keeps the key it always had
        record |= {"views": views, "shift": shift, "dtype": dtype}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def view_shifts(episode: int, view: int, n_frames: int, shift: int) -> np.ndarray:
    """(n_frames, 2) pixel offsets (dy, dx) of one cached view of an episode: view 0 is unshifted, the others
    draw every frame's offset in [-shift, shift] from a generator seeded by (episode, view), so a cache computed
    twice, or resumed, holds the same views."""
    if view == 0:
        return np.zeros((n_frames, 2), np.int64)
    return np.random.default_rng((episode, view)).integers(-shift, shift + 1, (n_frames, 2))


def feature_key(camera: str) -> str:
    """Key of a camera's cached features, in the cache store and in training batches."""
    return f"features.{camera}"


def feature_store(store_path: str | Path, encoder: TotoEncoder, cameras: tuple[str, ...], window: int,
                  progress: bool = True, views: int = 1, shift: int = 0, dtype: str = "float32") -> Path:
    """Return the path of the feature cache for this store/encoder/window, computing what is missing.

    views > 1 (random-shift augmentation for a frozen encoder): each camera's key holds (views, P, C) per step;
    view k streams the episode with every frame shifted by `view_shifts(episode, k, ...)` (`shift_frames`, the
    function the CNN's augmentation uses), each view with its own streaming cache, as a camera has."""
    store = TrajectoryStore.open(store_path)
    missing = [c for c in cameras if c not in store.image_keys]
    if missing:
        raise ValueError(f"feature cache: cameras {missing} are not image keys of {store_path}; "
                         f"it has {list(store.image_keys)}")
    low_dim = [k for k in store.keys if k not in store.image_keys]
    if views < 1 or (views > 1) != (shift > 0) or dtype not in ("float32", "float16"):
        raise ValueError(f"feature cache: expected views >= 1 with shift > 0 exactly when views > 1, and dtype "
                         f"float32 or float16; got views={views}, shift={shift}, dtype={dtype!r}")
    path = Path(f"{store_path}.features") / f"{cache_key(encoder, store, cameras, window, views, shift, dtype)}.zarr"
    p, c = encoder.cfg.tokens_per_frame, encoder.dim
    shape = (p, c) if views == 1 else (views, p, c)
    schema = {feature_key(cam): (shape, dtype) for cam in cameras}
    schema.update({k: store.schema[k] for k in low_dim})
    # several trainers may start on one store at once: one creates the cache, the others append to it
    cache = TrajectoryStore.open_or_create(path, schema, {"source_store": str(store_path), "window": window,
                                                          "layer": encoder.layer, "cameras": list(cameras)})
    todo = range(cache.n_episodes, store.n_episodes)
    stream = StreamingEncoder(encoder, window=window)
    for i in tqdm(todo, desc="encoder features", disable=not progress or not todo):
        ep = store.episode(i)
        data = {k: ep[k] for k in low_dim}
        stream.reset()
        n = len(ep[cameras[0]])
        shifted = [[shift_frames(ep[cam], view_shifts(i, k, n, shift), shift) for k in range(views)]
                   for cam in cameras]
        frames = torch.from_numpy(np.stack([v for cam in shifted for v in cam], axis=1))  # (T, cameras * views, H, W, 3)
        # the cameras (and their views) stream side by side as one batch: each keeps its own cache rows
        feats = torch.stack([stream.step(frames[t]).features[:, 0] for t in range(n)], dim=1)  # (cams * views, T, P, C)
        feats = feats.view(len(cameras), views, *feats.shape[1:]).transpose(1, 2)  # (cams, T, views, P, C)
        for j, cam in enumerate(cameras):
            data[feature_key(cam)] = (feats[j, :, 0] if views == 1 else feats[j]).numpy().astype(dtype)
            if not np.isfinite(data[feature_key(cam)]).all():
                raise ValueError(f"feature cache: the encoder's features of {store_path} episode {i}, camera {cam!r}, "
                                 "are not finite (NaN or inf): check the encoder checkpoint")
        cache.add_episode(data, store.episode_meta(i))
    return path
