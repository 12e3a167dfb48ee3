"""Frozen features for probes: every layer in one pass, the sources probed, and an on-disk cache.

`all_layer_features(encoder, clips)` is the one extraction path: one forward per batch of clips returns the
residual stream after every layer (`TotoEncoder.forward(all_layers=True)`), or, with a `window` shorter than
the clips, the streaming encoder's per-frame output (`StreamingEncoder.step(all_layers=True)`, what the
policy's feature cache and a control loop see). The task probes (toto-probe) and the state probe
(policies/state_probe.py, toto-probe-state) both read features through it. Layer 0 is the token embedding
alone (the tokenizer's codes, no transformer block); layer L is the last block.

Sources are what a probe reads: `EncoderSource` (a Toto encoder, trained or randomly initialised) and
`PixelSource` (raw pixels cut into patches at the tokenizer's grid, the baseline every probe is held to) and
`PixelMotionSource` (those patches beside the previous frame's neighbouring patches: an oracle that mixes time,
which tells whether a probe reads motion when the features carry it).

`FeatureCache` keeps an encoder's features on disk, since the encoder is frozen: one safetensors file per
slot (the source's slot, the data, the layers, the window, the frame size), its full key in the file's
metadata, including a hash of the weights. A file whose key differs (the checkpoint was retrained or
changed) is recomputed and replaced, so changed weights never serve stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from toto_robot.atomic import atomic_path
from toto_robot.encoder import StreamingEncoder, TotoEncoder

CACHE_VERSION = 1


def check_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """`layers` (None: every one) as a tuple, each in 0..n_layers (0 = token embedding, n_layers = last block)."""
    if layers is None:
        return tuple(range(n_layers + 1))
    layers = tuple(int(layer) for layer in layers)
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad or not layers:
        raise ValueError(f"layers: expected indices in 0..{n_layers} (0 = token embedding, {n_layers} = the last "
                         f"block of this encoder), got {list(layers)}")
    return layers


@torch.no_grad()
def all_layer_features(encoder: TotoEncoder, clips, *, layers: Sequence[int] | None = None, window: int | None = None,
                       batch_size: int = 16, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """clips (N, T, H, W, 3) uint8 -> (len(layers), N, T, P, C) float16: the residual stream after each of
    `layers` (default 0..encoder.n_kept) for every token of every frame.

    window None, or T <= window: the plain causal forward over each whole clip, one pass per batch.
    window < T: the streaming encoder with that window, one step per frame (batched over clips)."""
    layers = check_layers(layers, encoder.n_kept)
    clips = torch.as_tensor(np.asarray(clips)) if not isinstance(clips, torch.Tensor) else clips
    if clips.ndim != 5:
        raise ValueError(f"clips: expected (N, T, H, W, 3), got shape {tuple(clips.shape)}")
    n, t = clips.shape[:2]
    index = torch.tensor(layers)
    stream = StreamingEncoder(encoder, window=window) if window is not None and t > window else None
    out = []
    for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = clips[i: i + batch_size].to(encoder.device)
        if stream is None:
            states = encoder(batch, all_layers=True).layers  # (L+1, B, T, P, C)
        else:
            stream.reset()
            states = torch.cat([stream.step(batch[:, s], all_layers=True).layers for s in range(t)], dim=2)
        out.append(states[index].half().cpu())  # (len(layers), B, T, P, C)
    return torch.cat(out, dim=1)


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_hash(clips: np.ndarray) -> str:
    """sha256 of the preprocessed frames the features are computed from (their shape and bytes)."""
    clips = np.ascontiguousarray(clips)
    h = hashlib.sha256(f"{clips.dtype}:{clips.shape}".encode())
    h.update(memoryview(clips).cast("B"))
    return h.hexdigest()


class EncoderSource:
    """A Toto encoder holding every block (keep_all), read at layers 0..L.

    `slot` names it in the cache (e.g. the checkpoint's path); `note` says what it is in the results."""

    cacheable = True

    def __init__(self, name: str, encoder: TotoEncoder, slot: str, note: str = ""):
        if encoder.n_kept != encoder.cfg.n_layers:
            raise ValueError(f"source {name}: expected an encoder that keeps all {encoder.cfg.n_layers} blocks "
                             f"(TotoEncoder(..., keep_all=True)), got one with {encoder.n_kept}")
        self.name, self.encoder, self.slot, self.note = name, encoder, slot, note
        self._weights: str | None = None

    @property
    def n_layers(self) -> int:
        return self.encoder.n_kept

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def grid(self) -> int:
        return self.encoder.tokenizer.cfg.grid

    @property
    def max_frames(self) -> int:
        return self.encoder.cfg.max_frames

    def identity(self) -> dict:
        if self._weights is None:  # hashing a large model takes a moment: once per source
            self._weights = weights_hash(self.encoder)
        return {"kind": "toto-encoder", "weights_sha256": self._weights}

    def features(self, clips, layers, window=None, batch_size=16, progress=False) -> torch.Tensor:
        return all_layer_features(self.encoder, clips, layers=layers, window=window, batch_size=batch_size,
                                  progress=progress, desc=f"{self.name} features")


class PixelSource:
    """Raw pixels as tokens: each frame cut into patch x patch squares at the tokenizer's grid, each patch's
    values in [-1, 1] flattened (patch * patch * 3 channels). One "layer", 0."""

    cacheable = False  # a reshape: cheaper to redo than to read back
    n_layers = 0
    note = "raw pixels: patches at the tokenizer's grid, flattened"

    def __init__(self, image_size: int, patch: int, name: str = "pixels"):
        if image_size % patch:
            raise ValueError(f"pixels: expected an image size divisible by the patch {patch}, got {image_size}")
        self.name, self.image_size, self.patch = name, image_size, patch
        self.slot = f"pixels:{patch}"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    def identity(self) -> dict:
        return {"kind": "pixels", "patch": self.patch}

    def features(self, clips, layers, window=None, batch_size=16, progress=False) -> torch.Tensor:
        check_layers(layers, 0)
        x = torch.as_tensor(np.asarray(clips))
        n, t, h, _, c = x.shape
        g, p = h // self.patch, self.patch
        x = x.reshape(n, t, g, p, g, p, c).permute(0, 1, 2, 4, 3, 5, 6)  # (N, T, g, g, p, p, 3)
        x = x.reshape(n, t, g * g, p * p * c).float() / 127.5 - 1.0  # (N, T, P, p*p*3)
        return x.half()[None]  # (1, N, T, P, C)


def motion_tokens(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, T, g*g, C) per-frame tokens -> (N, T, g*g, 5C): each token beside the previous frame's tokens at the 4
    neighbouring grid positions (above, below, left, right; wrapping round the edges; zeros at the first frame)."""
    n, t, p, c = tokens.shape
    x = tokens.float().reshape(n, t, grid, grid, c)  # (N, T, g, g, C)
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # frame t holds frame t - 1
    # roll by +1 along rows puts row r - 1 (the token above) at row r, and so on
    near = [prev.roll(shift, dim) for dim, shift in ((2, 1), (2, -1), (3, 1), (3, -1))]
    return torch.cat([x, *near], dim=-1).reshape(n, t, p, 5 * c).to(tokens.dtype)  # (N, T, P, 5C)


class PixelMotionSource(PixelSource):
    """Raw pixel patches with motion in them: each token is its patch and the previous frame's 4 neighbouring
    patches (`motion_tokens`), so a token sees where the content under it came from. An oracle, not an
    encoder: it shows whether a probe reads motion when the features carry it."""

    note = "oracle: each pixel patch beside the previous frame's 4 neighbouring patches (mixes time)"

    def __init__(self, image_size: int, patch: int, name: str = "pixel_motion"):
        super().__init__(image_size, patch, name)
        self.slot = f"pixel_motion:{patch}"

    def identity(self) -> dict:
        return {"kind": "pixel_motion", "patch": self.patch}

    def features(self, clips, layers, window=None, batch_size=16, progress=False) -> torch.Tensor:
        return motion_tokens(super().features(clips, layers)[0], self.grid)[None]  # (1, N, T, P, 5C)


class FeatureCache:
    """Features of cacheable sources on disk under `root` (None: compute every time). `hits` / `misses`
    count what each call did."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root)
        self.hits = self.misses = 0

    def features(self, source, clips: np.ndarray, layers: Sequence[int], window: int | None = None,
                 batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """`source.features(clips, layers, window)`, read from the cache when its key matches."""
        layers = tuple(layers)
        if self.root is None or not source.cacheable:
            return source.features(clips, layers, window, batch_size, progress)
        slot = {"version": CACHE_VERSION, "source": source.slot, "data_sha256": data_hash(clips),
                "layers": list(layers), "window": window, "frames": list(np.shape(clips)[1:])}
        key = json.dumps({**slot, "identity": source.identity()}, sort_keys=True)
        path = self.root / f"{hashlib.sha256(json.dumps(slot, sort_keys=True).encode()).hexdigest()[:32]}.safetensors"
        if path.is_file():
            with safe_open(path, framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    self.hits += 1
                    return f.get_tensor("features")
        self.misses += 1  # none yet, or the weights changed: recompute and replace
        feats = source.features(clips, layers, window, batch_size, progress)
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats.contiguous()}, tmp, metadata={"key": key})
        return feats
