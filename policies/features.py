"""Caching frozen-encoder features of a trajectory store, so head training never runs the encoder.

The cache is itself a TrajectoryStore beside the source store (`<store>.features/<key>.zarr`): one key
per camera with the features of every frame (P, C), plus copies of the low-dimensional keys, so one
sampler over the cache yields complete training windows. Features are computed the way the policy
sees them when it acts: each episode streams through a `StreamingEncoder` with the policy's window.
Features may come from several layers of the encoder, concatenated along channels per token
(`layer_features`; `feature_store(layers=)`). The key hashes the encoder's weights, its read-out layer
(or layers), the window, the cameras and the source store's episodes, so changing any of them computes
a new cache; an interrupted cache resumes from its last complete episode (appends are atomic). For random-shift augmentation the cache can hold several
views of every frame (view 0 unshifted, the others shifted at random; `feature_store(views=, shift=)`),
in float32 or float16. Feature chunks hold few steps (`FEATURE_CHUNK_BYTES`), so training can read a window's
features from the store without loading the cache (policies/train.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from toto_robot.encoder import EncoderOutput, StreamingEncoder, TotoEncoder
from toto_robot.frames import shift_frames
from toto_robot.store import TrajectoryStore

FEATURE_CHUNK_BYTES = 256 * 1024  # at most this per chunk (or one step): reading a step decodes one chunk


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def valid_layers(layers: tuple[int, ...], n: int) -> bool:
    """Whether `layers` can be read together: at least one, each a block 1..n, in increasing order, none twice."""
    blocks = all(isinstance(k, int | np.integer) and not isinstance(k, bool) and 1 <= k <= n for k in layers)
    return len(layers) > 0 and blocks and list(layers) == sorted(set(layers))


def check_layers(encoder: TotoEncoder, layers: tuple[int, ...]) -> None:
    """Layers to read: blocks 1..n_kept of this encoder, in increasing order, none twice."""
    if not valid_layers(layers, encoder.n_kept):
        raise ValueError(f"layers: expected increasing, distinct blocks in 1..{encoder.n_kept} (the blocks this "
                         f"encoder keeps), got {list(layers)}")


def layer_label(encoder: TotoEncoder, layers: tuple[int, ...] | None) -> int | list[int]:
    """The read-out layer as cache keys and results record it: an int for one layer (the key a single-layer
    cache always had), the list for several."""
    layers = (encoder.layer,) if layers is None else tuple(layers)
    return layers[0] if len(layers) == 1 else list(layers)


def layer_features(encoder: TotoEncoder, encode: Callable[..., EncoderOutput], frames,
                   layers: tuple[int, ...] | None = None) -> torch.Tensor:
    """Frames through `encode` (the encoder itself, or a StreamingEncoder's `step` over it) -> the features of
    `layers` concatenated along channels per token: (B, T, P, len(layers) * C), the lowest layer first.
    The encoder's own read-out layer (`layers` None or just it) reads `features`; any other set reads the
    residual streams of `all_layers=True` (one pass, so a stream must be read the same way from its reset).
    Called every control step: `layers` are checked where they are configured (PolicyConfig, feature_store)."""
    if layers is None or tuple(layers) == (encoder.layer,):
        return encode(frames).features
    states = encode(frames, all_layers=True).layers  # (n_kept + 1, B, T, P, C)
    return torch.cat([states[k] for k in layers], dim=-1)  # (B, T, P, len(layers) * C)


def cache_key(encoder: TotoEncoder, store: TrajectoryStore, cameras: tuple[str, ...], window: int,
              views: int = 1, shift: int = 0, dtype: str = "float32", layers: tuple[int, ...] | None = None) -> str:
    record = {"weights": weights_digest(encoder), "layer": layer_label(encoder, layers), "window": window,
              "cameras": list(cameras), "episode_ends": store.episode_ends.tolist()}
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


def feature_chunk_steps(shape: tuple[int, ...], dtype: str | np.dtype) -> int:
    """Steps per chunk of a feature key whose step has `shape` and `dtype`: FEATURE_CHUNK_BYTES' worth, or one.
    (The store's low-dimensional default, 1024 steps, would make one step's read decode tens of MiB.)"""
    return max(1, FEATURE_CHUNK_BYTES // (math.prod(shape) * np.dtype(dtype).itemsize))


def feature_store(store_path: str | Path, encoder: TotoEncoder, cameras: tuple[str, ...], window: int,
                  progress: bool = True, views: int = 1, shift: int = 0, dtype: str = "float32",
                  layers: tuple[int, ...] | None = None) -> Path:
    """Return the path of the feature cache for this store/encoder/window, computing what is missing.

    layers: the blocks whose features are cached, concatenated along channels (`layer_features`); None reads
    the encoder's read-out layer.

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
    if layers is not None:
        check_layers(encoder, tuple(layers))
    key = cache_key(encoder, store, cameras, window, views, shift, dtype, layers)
    path = Path(f"{store_path}.features") / f"{key}.zarr"
    p, c = encoder.cfg.tokens_per_frame, encoder.dim * (1 if layers is None else len(layers))
    shape = (p, c) if views == 1 else (views, p, c)
    schema = {feature_key(cam): (shape, dtype) for cam in cameras}
    schema.update({k: store.schema[k] for k in low_dim})
    # several trainers may start on one store at once: one creates the cache, and each episode is appended once
    # (add_episode's index), by whichever trainer computes it first
    cache = TrajectoryStore.open_or_create(path, schema, {"source_store": str(store_path), "window": window,
                                                          "layer": layer_label(encoder, layers),
                                                          "cameras": list(cameras)},
                                           chunk_steps={feature_key(cam): feature_chunk_steps(shape, dtype)
                                                        for cam in cameras})
    todo = range(cache.n_episodes, store.n_episodes)
    stream = StreamingEncoder(encoder, window=window)
    for i in tqdm(todo, desc="encoder features", disable=not progress or not todo):
        cache.refresh()
        if cache.n_episodes > i:  # another trainer on the same store computed this one
            continue
        ep = store.episode(i)
        data = {k: ep[k] for k in low_dim}
        stream.reset()
        n = len(ep[cameras[0]])
        shifted = [[shift_frames(ep[cam], view_shifts(i, k, n, shift), shift) for k in range(views)]
                   for cam in cameras]
        frames = torch.from_numpy(np.stack([v for cam in shifted for v in cam], axis=1))  # (T, cameras * views, H, W, 3)
        # the cameras (and their views) stream side by side as one batch: each keeps its own cache rows
        feats = torch.stack([layer_features(encoder, stream.step, frames[t], layers)[:, 0] for t in range(n)],
                            dim=1)  # (cams * views, T, P, C)
        feats = feats.view(len(cameras), views, *feats.shape[1:]).transpose(1, 2)  # (cams, T, views, P, C)
        for j, cam in enumerate(cameras):
            data[feature_key(cam)] = (feats[j, :, 0] if views == 1 else feats[j]).numpy().astype(dtype)
            if not np.isfinite(data[feature_key(cam)]).all():
                raise ValueError(f"feature cache: the encoder's features of {store_path} episode {i}, camera {cam!r}, "
                                 "are not finite (NaN or inf): check the encoder checkpoint")
        cache.add_episode(data, store.episode_meta(i), index=i)  # skipped if another trainer appended it first
    return path


class FrameFeatureCache:
    """Frozen features of single frames, kept in memory and keyed by the frame's bytes: a trainer that cannot
    precompute a store's features (LeRobot's loop hands batches of decoded images, not episodes) encodes each
    distinct frame once. Content keys stay right whatever sampler, augmentation or dataset order produced the
    frame: a shifted or transformed frame is a new key, never a stale feature.

    encode: (B, H, W, 3) uint8 -> (B, P, C) features of frames without temporal context (BCPolicy.encode_images,
    the features BC trains on). max_items bounds memory: once full, new frames are encoded but not kept."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_items: int = 200_000,
                 dtype: str = "float32"):
        if max_items < 0 or dtype not in ("float32", "float16"):
            raise ValueError(f"frame feature cache: expected max_items >= 0 and dtype float32 or float16, got "
                             f"max_items={max_items}, dtype={dtype!r}")
        self.encode, self.max_items, self.dtype = encode, max_items, getattr(torch, dtype)
        self._feats: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._feats)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, P, C) float32, encoding only the frames not seen before."""
        frames = frames.contiguous()
        # blake2b over the raw bytes: a 64 px frame hashes in microseconds, far below one encoder call
        keys = [hashlib.blake2b(f.numpy().tobytes(), digest_size=16).digest() for f in frames.cpu()]
        new: dict[bytes, int] = {}  # each frame not cached yet -> its first position in the batch
        for i, k in enumerate(keys):
            if k not in self._feats and k not in new:
                new[k] = i
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        fresh: dict[bytes, torch.Tensor] = {}
        if new:
            with torch.no_grad():
                feats = self.encode(frames[list(new.values())])
            fresh = {k: f.to("cpu", self.dtype).clone() for k, f in zip(new, feats)}
            room = max(0, self.max_items - len(self._feats))
            self._feats.update(list(fresh.items())[:room])
        return torch.stack([fresh[k] if k in fresh else self._feats[k] for k in keys]).float()
