"""The frozen Toto encoder, and its streaming form for control loops.

`TotoEncoder.from_pretrained(dir)` loads a tokenizer + transformer checkpoint and maps frames
(B, T, H, W, 3) to named outputs: the token ids, per-token features from an intermediate layer (the
middle one by default: the paper finds ~50% depth best), and pooled features (mean, or a trainable
attentive pooler for a downstream head). `forward(frames, all_layers=True)` also returns the residual
stream after every kept block in one pass (for probes); `keep_all=True` keeps every block, not only those
up to the read-out layer.

`StreamingEncoder` takes one frame per control step and keeps the transformer's `SinkWindowCache`
(toto_robot.model, which documents the mechanics): the keys/values of a rolling window of the last N
frames, each rotated once at its absolute position and overwritten in a ring buffer when the window
slides, plus the clip's start token as a permanent attention sink, re-rotated to sit just before the window.

What the cache computes is sliding-window attention: every token, at every layer, attends to the sink
and to the tokens of the last N frames. Until the window is full this is exactly the plain causal
forward over the same frames. Once it slides, the cached keys of older frames carry context from
frames that have since left the window (as in every sliding-window cache), so the exact reference is
`toto_robot.model.windowed_hidden_states`, the same attention pattern computed layer by layer over the
whole history. `StreamingEncoder(mode="recompute")` instead re-encodes the window from scratch each step.

The per-step work runs on the backends `tokenizer_backend` and `step_backend` choose (toto_robot/fast.py):
"eager" for both is the reference; the others are the deployment fast path, checked against it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from toto_robot.checkpoint import load_toto, save_toto  # noqa: F401  (save_toto: re-exported for its callers)
from toto_robot.fast import STEP_BACKENDS, FastTokenizer, check_backend
from toto_robot.frames import as_frames
from toto_robot.model import ModelConfig, SinkWindowCache, Transformer, clip_to_sequence
from toto_robot.parallel import autocast
from toto_robot.tokenizer import Tokenizer

POOLINGS = ("mean", "attentive")


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, T, h, w) token ids
    features: torch.Tensor  # (B, T, P, C) features of every token from the chosen layer
    pooled: torch.Tensor  # (B, C) pooled over all tokens given
    # with all_layers=True: (L+1, B, T, P, C) float32, the residual stream after 0 (the token embedding)
    # .. L kept blocks; layers[layer] holds the features
    layers: torch.Tensor | None = None


class AttentivePooler(nn.Module):
    """A learned query cross-attends over the tokens (the paper's attentive probe): (B, N, C) -> (B, C)."""

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        if dim % num_heads:
            num_heads = 1
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        y, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)
        return self.out_norm(y[:, 0])  # (B, C)


class TotoEncoder(nn.Module):
    """Frozen tokenizer + the first `layer` transformer blocks; only the attentive pooler (if any) trains.

    The encoder holds copies: the tokenizer and transformer it is given are left as they are. It keeps the
    blocks up to the read-out layer, or every block with `keep_all` (for `forward(..., all_layers=True)`
    over the whole depth). Its state_dict names are the checkpoint's: `tokenizer.*`, `model.tok_emb.*`,
    `model.layers.N.*` (kept blocks), `model.norm.*`, and `pooler.*` if attentive."""

    def __init__(self, tokenizer: Tokenizer, model: Transformer, layer: int | None = None, pooling: str = "mean",
                 keep_all: bool = False):
        super().__init__()
        cfg = model.cfg
        layer = cfg.n_layers // 2 if layer is None else layer
        if not 1 <= layer <= cfg.n_layers:
            raise ValueError(f"layer: expected 1..{cfg.n_layers} (blocks of the transformer), got {layer}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        grid = tokenizer.cfg.grid
        if grid * grid != cfg.tokens_per_frame:
            raise ValueError(f"tokenizer grid {grid}x{grid} does not match the model's "
                             f"tokens_per_frame={cfg.tokens_per_frame}")
        self.layer, self.pooling = layer, pooling
        self.tokenizer = copy.deepcopy(tokenizer)
        # Blocks above the read-out layer never run unless kept for all_layers; the LM head never does.
        self.model = model.trunk(cfg.n_layers if keep_all else layer)
        for p in list(self.tokenizer.parameters()) + list(self.model.parameters()):
            p.requires_grad_(False)
        self.pooler = AttentivePooler(cfg.d_model) if pooling == "attentive" else None
        self.train(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, layer: int | None = None, pooling: str = "mean",
                        device: str | torch.device = "cpu", keep_all: bool = False) -> TotoEncoder:
        tokenizer, model, _ = load_toto(path)  # on the CPU: only the kept copy goes to the device
        return cls(tokenizer, model, layer=layer, pooling=pooling, keep_all=keep_all).to(device)

    def train(self, mode: bool = True):
        """The backbone stays in eval mode; only the pooler follows `mode`."""
        super().train(False)
        if self.pooler is not None:
            self.pooler.train(mode)
        return self

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg

    @property
    def dim(self) -> int:
        return self.cfg.d_model

    @property
    def image_size(self) -> int:
        return self.tokenizer.cfg.image_size

    @property
    def device(self) -> torch.device:
        return self.model.tok_emb.weight.device

    def autocast(self):
        return autocast(self.device)

    def check_frames(self, frames, max_frames: int | None = None) -> None:
        as_frames(frames, size_multiple=self.tokenizer.cfg.downsample, image_size=self.image_size,
                  max_frames=self.cfg.max_frames if max_frames is None else max_frames)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, N, C) token features -> (B, C)."""
        if self.pooler is None:
            return features.mean(dim=1)
        return self.pooler(features)

    @property
    def n_kept(self) -> int:
        """Transformer blocks this encoder holds: `layer`, or all of them with keep_all."""
        return len(self.model.layers)

    def forward(self, frames, all_layers: bool = False) -> EncoderOutput:
        """frames (B, T, H, W, 3), uint8 or float in [0, 1] -> EncoderOutput (plain causal forward); with
        `all_layers`, also `layers` (n_kept + 1, B, T, P, C)."""
        self.check_frames(frames)
        with torch.no_grad(), self.autocast():
            ids = self.tokenizer.encode(frames)  # (B, T, h, w)
            seq = clip_to_sequence(ids, self.cfg, add_end=False)  # (B, 1 + T*P)
            n = self.n_kept if all_layers else self.layer
            states = self.model.hidden_states(seq, n, all_layers=all_layers)[..., 1:, :].float()
        b, t, p = *ids.shape[:2], self.cfg.tokens_per_frame
        h = states[self.layer] if all_layers else states  # (B, T*P, C)
        layers = states.reshape(n + 1, b, t, p, -1) if all_layers else None  # (L+1, B, T, P, C)
        return EncoderOutput(tokens=ids, features=h.reshape(b, t, p, -1), pooled=self.pool(h), layers=layers)


STREAM_MODES = ("cached", "recompute")


class StreamingEncoder:
    """One frame per step -> features of that frame, with temporal context from the last `window` frames.

    mode="cached": the transformer's SinkWindowCache; each step costs about one frame's forward pass.
    mode="recompute": re-encodes the window's tokens from scratch each step (exact window-only features).
    `step(frame, all_layers=True)` also returns every kept block's output for the frame; in cached mode the
    choice holds from the first step after `reset` (the cache has as many layers as that step ran).
    `tokenizer_backend` / `step_backend` (toto_robot/fast.py) pick the fast path; a step backend other than
    "eager" needs mode="cached" (it is the cache it makes static).
    """

    def __init__(self, encoder: TotoEncoder, window: int = 16, mode: str = "cached", tokenizer_backend: str = "eager",
                 step_backend: str = "eager"):
        if not 1 <= window <= encoder.cfg.max_frames:
            raise ValueError(f"window: expected 1..{encoder.cfg.max_frames} frames (the context allows), got {window}")
        if mode not in STREAM_MODES:
            raise ValueError(f"mode: expected one of {STREAM_MODES}, got {mode!r}")
        check_backend("step_backend", step_backend, STEP_BACKENDS)
        if mode == "recompute" and step_backend != "eager":
            raise ValueError(f"step_backend: mode 'recompute' has no cache to make static, expected 'eager', "
                             f"got {step_backend!r}")
        self.encoder, self.window, self.mode, self.step_backend = encoder, window, mode, step_backend
        self.tokenizer = FastTokenizer(encoder.tokenizer, tokenizer_backend)
        self.cache = SinkWindowCache(encoder.cfg, window, static=step_backend != "eager")
        self._frame_states = self._cached_frame
        if step_backend == "compile":  # the cache's Python bookkeeping (begin) stays eager, the blocks compile
            self.cache.begin = torch.compiler.disable(self.cache.begin)
            self._frame_states = torch.compile(self._cached_frame, dynamic=False)
        self.reset()

    def reset(self) -> None:
        self.t = 0  # frames seen since reset
        self.cache.reset()  # cached mode
        self._recent_ids: list[torch.Tensor] = []  # recompute mode: the window's token grids

    def _step_autocast(self):
        """bf16 autocast for the transformer step with step_backend="bf16" (also on CPU), else the encoder's."""
        if self.step_backend == "bf16":
            return torch.autocast(self.encoder.device.type, dtype=torch.bfloat16)
        return self.encoder.autocast()

    def _check_frame(self, frame) -> torch.Tensor:
        if getattr(frame, "ndim", None) != 4:
            raise ValueError(f"frame: expected rank 4 (B, H, W, 3) per step, got shape {tuple(frame.shape)}")
        frame = frame[:, None]  # (B, 1, H, W, 3)
        self.encoder.check_frames(frame)
        return frame

    @torch.no_grad()
    def step(self, frame, all_layers: bool = False) -> EncoderOutput:
        """frame (B, H, W, 3) -> EncoderOutput of this frame: tokens (B, 1, h, w), features (B, 1, P, C), and
        with `all_layers` layers (n_kept + 1, B, 1, P, C)."""
        frame = self._check_frame(frame)
        enc = self.encoder
        n = enc.n_kept if all_layers else enc.layer
        if self.mode == "cached" and self.cache.started and n != self.cache.n_layers:
            raise ValueError(f"all_layers: expected {not all_layers} as at the first step since reset (the cache "
                             f"holds {self.cache.n_layers} layers, this step needs {n}), got {all_layers}")
        with enc.autocast():
            ids = self.tokenizer.encode(frame)  # (B, 1, h, w)
        with self._step_autocast():
            step = self._step_cached if self.mode == "cached" else self._step_recompute
            states = step(ids, n, all_layers).float()  # (B, P, C), or (n+1, B, P, C) with all_layers
        self.t += 1
        h = states[enc.layer] if all_layers else states
        layers = states[:, :, None] if all_layers else None  # (n+1, B, 1, P, C)
        return EncoderOutput(tokens=ids, features=h[:, None], pooled=enc.pool(h), layers=layers)

    def _step_recompute(self, ids: torch.Tensor, n: int, all_layers: bool) -> torch.Tensor:
        enc = self.encoder
        self._recent_ids = (self._recent_ids + [ids])[-self.window:]
        seq = clip_to_sequence(torch.cat(self._recent_ids, dim=1), enc.cfg, add_end=False)
        return enc.model.hidden_states(seq, n, all_layers=all_layers)[..., -enc.cfg.tokens_per_frame:, :]

    def _step_cached(self, ids: torch.Tensor, n: int, all_layers: bool) -> torch.Tensor:
        model = self.encoder.model
        if not self.cache.started:  # the start token, the cache's attention sink
            start = torch.full((ids.shape[0], 1), model.cfg.special_id("video_start"), dtype=torch.long,
                               device=ids.device)
            model.hidden_states(start, n, cache=self.cache)
        return self._frame_states(ids.flatten(1), n, all_layers)

    def _cached_frame(self, ids: torch.Tensor, n: int, all_layers: bool) -> torch.Tensor:
        """One frame's ids (B, P) through the cache: (B, P, C), or (n+1, B, P, C) with all_layers."""
        return self.encoder.model.hidden_states(ids, n, cache=self.cache, all_layers=all_layers)
