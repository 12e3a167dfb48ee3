"""The frozen Toto encoder, and its streaming form for control loops.

`TotoEncoder.from_pretrained(dir)` loads a tokenizer + transformer checkpoint and maps frames
(B, T, H, W, 3) to named outputs: the token ids, per-token features from an intermediate layer (the
middle one by default: the paper finds ~50% depth best), and pooled features (mean, or a trainable
attentive pooler for a downstream head).

`StreamingEncoder` takes one frame per control step and keeps a key/value cache over a rolling window
of the last N frames, plus the clip's start token as a permanent attention sink. Each layer's keys are
rotated once, at their absolute position, and never recomputed: when the window slides, the oldest
frame's slot in a ring buffer is overwritten. Rotary scores depend only on relative positions, and the
sink's key is re-rotated each step to sit just before the window, so every score a query sees is the
score it would see with the window laid out from position 0.

What the cache computes is sliding-window attention: every token, at every layer, attends to the sink
and to the tokens of the last N frames. Until the window is full this is exactly the plain causal
forward over the same frames. Once it slides, the cached keys of older frames carry context from
frames that have since left the window (as in every sliding-window cache), so the exact reference is
`windowed_hidden_states` below, the same attention pattern computed layer by layer over the whole
history. `StreamingEncoder(mode="recompute")` instead re-encodes the window from scratch each step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from toto_robot.checkpoint import load_state_dict, read_config, save_checkpoint
from toto_robot.frames import as_frames
from toto_robot.model import ModelConfig, Transformer, apply_rope, clip_to_sequence, rope_cos_sin
from toto_robot.parallel import autocast
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

POOLINGS = ("mean", "attentive")
CHECKPOINT_KIND = "toto"


@dataclass
class EncoderOutput:
    tokens: torch.Tensor  # (B, T, h, w) token ids
    features: torch.Tensor  # (B, T, P, C) features of every token from the chosen layer
    pooled: torch.Tensor  # (B, C) pooled over all tokens given


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


def save_toto(path: str | Path, tokenizer: Tokenizer, model: Transformer, extra: dict | None = None) -> Path:
    """A Toto checkpoint: config.json + tokenizer.safetensors + model.safetensors."""
    config = {
        "kind": CHECKPOINT_KIND,
        "tokenizer": asdict(tokenizer.cfg),
        "model": model.cfg.to_dict(),
        **(extra or {}),
    }
    return save_checkpoint(path, config, {"tokenizer": tokenizer.state_dict(), "model": model.state_dict()})


def load_toto(path: str | Path, device: str | torch.device = "cpu") -> tuple[Tokenizer, Transformer, dict]:
    """Rebuild tokenizer and transformer from a checkpoint directory alone."""
    config = read_config(path)
    if config.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"checkpoint {path}: expected kind {CHECKPOINT_KIND!r}, found {config.get('kind')!r}")
    tokenizer = Tokenizer(TokenizerConfig(**config["tokenizer"]))
    tokenizer.load_state_dict(load_state_dict(path, "tokenizer"))
    model = Transformer(ModelConfig(**config["model"]))
    model.load_state_dict(load_state_dict(path, "model"))
    return tokenizer.to(device), model.to(device), config


class TotoEncoder(nn.Module):
    """Frozen tokenizer + the first `layer` transformer blocks; only the attentive pooler (if any) trains."""

    def __init__(self, tokenizer: Tokenizer, model: Transformer, layer: int | None = None, pooling: str = "mean"):
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
        self.tokenizer = tokenizer
        self.model = model
        # Blocks above the read-out layer never run: drop them (and the LM head) to save memory.
        self.model.layers = self.model.layers[:layer]
        self.model.output = nn.Identity()
        for p in list(self.tokenizer.parameters()) + list(self.model.parameters()):
            p.requires_grad_(False)
        self.pooler = AttentivePooler(cfg.d_model) if pooling == "attentive" else None
        self.train(False)

    @classmethod
    def from_pretrained(cls, path: str | Path, layer: int | None = None, pooling: str = "mean",
                        device: str | torch.device = "cpu") -> TotoEncoder:
        tokenizer, model, _ = load_toto(path, device)
        return cls(tokenizer, model, layer=layer, pooling=pooling).to(device)

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

    def forward(self, frames) -> EncoderOutput:
        """frames (B, T, H, W, 3), uint8 or float in [0, 1] -> EncoderOutput (plain causal forward)."""
        self.check_frames(frames)
        with torch.no_grad(), self.autocast():
            ids = self.tokenizer.encode(frames)  # (B, T, h, w)
            seq = clip_to_sequence(ids, self.cfg, add_end=False)  # (B, 1 + T*P)
            h = self.model.hidden_states(seq, self.layer)[:, 1:].float()  # (B, T*P, C)
        b, t = ids.shape[:2]
        features = h.reshape(b, t, self.cfg.tokens_per_frame, -1)  # (B, T, P, C)
        return EncoderOutput(tokens=ids, features=features, pooled=self.pool(h))


def _window_mask(p: int, n_frames: int, slot: int, device) -> torch.Tensor:
    """Boolean mask (P, 1 + n_frames*P) for P queries of the frame in `slot`: the sink and the other
    filled slots are visible, the frame's own slot is causal."""
    mask = torch.ones(p, 1 + n_frames * p, dtype=torch.bool, device=device)
    own = slice(1 + slot * p, 1 + (slot + 1) * p)
    mask[:, own] = torch.ones(p, p, dtype=torch.bool, device=device).tril()
    return mask


@torch.no_grad()
def windowed_hidden_states(model: Transformer, seq: torch.Tensor, window: int, n_layers: int) -> torch.Tensor:
    """Reference for the streaming cache, computed layer by layer over the whole history.

    seq: (B, 1 + F*P) start token then F frames. Each token of frame f attends to the start token
    (its key rotated to sit at the window's start) and the tokens of frames max(0, f-window+1)..f.
    Returns the residual stream after `n_layers` blocks, (B, 1 + F*P, C)."""
    cfg = model.cfg
    p = cfg.tokens_per_frame
    n_frames = (seq.shape[1] - 1) // p
    x = model.tok_emb(seq)  # (B, L, C)
    cos, sin = rope_cos_sin(torch.arange(seq.shape[1], device=seq.device), cfg.head_dim, cfg.rope_base)
    for block in model.layers[:n_layers]:
        q, k, v = block.attn.qkv(block.attn_norm(x))  # (B, H, L, D)
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = torch.empty_like(q)
        out[:, :, :1] = v[:, :, :1]  # the start token attends only to itself
        for f in range(n_frames):
            s = max(0, f - window + 1)
            scos, ssin = rope_cos_sin(torch.tensor([s * p], device=seq.device), cfg.head_dim, cfg.rope_base)
            keys = torch.cat([apply_rope(k[:, :, :1], scos, ssin), kr[:, :, 1 + s * p: 1 + (f + 1) * p]], dim=2)
            vals = torch.cat([v[:, :, :1], v[:, :, 1 + s * p: 1 + (f + 1) * p]], dim=2)
            mask = _window_mask(p, f - s + 1, f - s, seq.device)
            out[:, :, 1 + f * p: 1 + (f + 1) * p] = F.scaled_dot_product_attention(
                qr[:, :, 1 + f * p: 1 + (f + 1) * p], keys, vals, attn_mask=mask)
        x = block.finish(x, out)
    return x


STREAM_MODES = ("cached", "recompute")


class StreamingEncoder:
    """One frame per step -> features of that frame, with temporal context from the last `window` frames.

    mode="cached": per-layer key/value ring buffer; each step costs about one frame's forward pass.
    mode="recompute": re-encodes the window's tokens from scratch each step (exact window-only features).
    """

    def __init__(self, encoder: TotoEncoder, window: int = 16, mode: str = "cached"):
        if not 1 <= window <= encoder.cfg.max_frames:
            raise ValueError(f"window: expected 1..{encoder.cfg.max_frames} frames (the context allows), got {window}")
        if mode not in STREAM_MODES:
            raise ValueError(f"mode: expected one of {STREAM_MODES}, got {mode!r}")
        self.encoder, self.window, self.mode = encoder, window, mode
        self.reset()

    def reset(self) -> None:
        self.t = 0  # frames seen since reset
        self._k: list[torch.Tensor] = []  # per layer (B, H, window*P, D), rotated at absolute positions
        self._v: list[torch.Tensor] = []
        self._sink_k: list[torch.Tensor] = []  # per layer (B, H, 1, D), unrotated
        self._sink_v: list[torch.Tensor] = []
        self._recent_ids: list[torch.Tensor] = []  # recompute mode: the window's token grids

    def _check_frame(self, frame) -> torch.Tensor:
        if getattr(frame, "ndim", None) != 4:
            raise ValueError(f"frame: expected rank 4 (B, H, W, 3) per step, got shape {tuple(frame.shape)}")
        frame = frame[:, None]  # (B, 1, H, W, 3)
        self.encoder.check_frames(frame)
        return frame

    @torch.no_grad()
    def step(self, frame) -> EncoderOutput:
        """frame (B, H, W, 3) -> EncoderOutput of this frame: tokens (B, 1, h, w), features (B, 1, P, C)."""
        frame = self._check_frame(frame)
        enc = self.encoder
        with enc.autocast():
            ids = enc.tokenizer.encode(frame)  # (B, 1, h, w)
            if self.mode == "cached":
                h = self._step_cached(ids.flatten(1))
            else:
                h = self._step_recompute(ids)
        self.t += 1
        h = h.float()
        return EncoderOutput(tokens=ids, features=h[:, None], pooled=enc.pool(h))

    def _step_recompute(self, ids: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        self._recent_ids = (self._recent_ids + [ids])[-self.window:]
        seq = clip_to_sequence(torch.cat(self._recent_ids, dim=1), enc.cfg, add_end=False)
        return enc.model.hidden_states(seq, enc.layer)[:, -enc.cfg.tokens_per_frame:]  # (B, P, C)

    def _start_sink(self, batch: int):
        """Run the start token through the layers once; its keys/values never change."""
        enc, cfg = self.encoder, self.encoder.cfg
        start = torch.full((batch, 1), cfg.special_id("video_start"), dtype=torch.long, device=enc.device)
        x = enc.model.tok_emb(start)
        p, hd = cfg.tokens_per_frame, cfg.head_dim
        for block in enc.model.layers:
            _q, k, v = block.attn.qkv(block.attn_norm(x))
            self._sink_k.append(k)
            self._sink_v.append(v)
            x = block.finish(x, v)  # a lone token's attention output is its own value
            self._k.append(k.new_zeros(batch, cfg.n_heads, self.window * p, hd))
            self._v.append(v.new_zeros(batch, cfg.n_heads, self.window * p, hd))

    def _step_cached(self, ids: torch.Tensor) -> torch.Tensor:
        enc, cfg = self.encoder, self.encoder.cfg
        p, t, n = cfg.tokens_per_frame, self.t, self.window
        if t == 0:
            self._start_sink(ids.shape[0])
        elif ids.shape[0] != self._k[0].shape[0]:
            raise ValueError(f"frame: expected batch size {self._k[0].shape[0]} (as at the first step since "
                             f"reset), got {ids.shape[0]}")
        dev = ids.device
        cos, sin = rope_cos_sin(1 + t * p + torch.arange(p, device=dev), cfg.head_dim, cfg.rope_base)
        shift = torch.tensor([max(0, t - n + 1) * p], device=dev)  # the window's first position
        scos, ssin = rope_cos_sin(shift, cfg.head_dim, cfg.rope_base)
        slot, filled = t % n, min(t + 1, n)
        mask = _window_mask(p, filled, slot, dev)
        x = enc.model.tok_emb(ids)  # (B, P, C)
        for i, block in enumerate(enc.model.layers):
            q, k, v = block.attn.qkv(block.attn_norm(x))  # (B, H, P, D)
            q = apply_rope(q, cos, sin)
            self._k[i][:, :, slot * p: (slot + 1) * p] = apply_rope(k, cos, sin)
            self._v[i][:, :, slot * p: (slot + 1) * p] = v
            keys = torch.cat([apply_rope(self._sink_k[i], scos, ssin), self._k[i][:, :, : filled * p]], dim=2)
            vals = torch.cat([self._sink_v[i], self._v[i][:, :, : filled * p]], dim=2)
            x = block.finish(x, F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask))
        return x  # (B, P, C)
