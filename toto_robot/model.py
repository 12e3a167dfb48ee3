"""LLaMA-style causal transformer over visual tokens (pre-norm RMSNorm, SwiGLU, rotary embeddings, SDPA).

Sequences are clips: a start token (video or image) followed by frames of `tokens_per_frame` ids in
raster order, then an end token. The vocabulary is the tokenizer's codebook plus three special tokens.
Parallelism (DDP / FSDP / compile) is applied from outside, by `toto_robot.parallel`.

Incremental decoding passes a cache into `Transformer.hidden_states`: `SinkWindowCache` streams frames
with sliding-window attention (the streaming encoder's cache); `windowed_hidden_states` is its
reference, the same attention pattern computed over a whole sequence without a cache.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

SPECIAL_TOKENS = ("video_start", "image_start", "end")


@dataclass
class ModelConfig:
    codebook_size: int = 8192  # tokenizer vocabulary; special tokens come after it
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    ffn_hidden: int | None = None  # None: LLaMA's rule, 8/3 * d_model rounded up to a multiple of 256
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    tokens_per_frame: int = 256  # 16x16 grid at 128 px
    max_seq_len: int = 4096 + 2  # 16 frames of 256 tokens + start and end tokens

    def __post_init__(self):
        for name in ("codebook_size", "n_layers", "d_model", "n_heads", "tokens_per_frame", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model: expected a multiple of n_heads={self.n_heads}, got {self.d_model}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"ModelConfig: head dim d_model/n_heads must be even for rotary embeddings, "
                             f"got {self.d_model}/{self.n_heads}")
        if self.ffn_hidden is None:
            self.ffn_hidden = 256 * math.ceil(8 * self.d_model / 3 / 256)
        if self.rope_base <= 1:
            raise ValueError(f"ModelConfig.rope_base: expected > 1, got {self.rope_base}")
        if self.max_seq_len < self.tokens_per_frame + 1:
            raise ValueError(f"ModelConfig.max_seq_len: expected room for a start token and one frame "
                             f"({self.tokens_per_frame + 1}), got {self.max_seq_len}")

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + len(SPECIAL_TOKENS)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_frames(self) -> int:
        """Frames that fit in the context after the start token (the end token is optional)."""
        return (self.max_seq_len - 1) // self.tokens_per_frame

    def special_id(self, name: str) -> int:
        return self.codebook_size + SPECIAL_TOKENS.index(name)

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's sizes (width/heads/layers from Table 1). FFN widths chosen so parameter counts with the
# 8192+3 vocabulary land near 120M / 280M / 1.1B; `1b` uses TinyLlama's 5632.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": {"n_layers": 4, "d_model": 64, "n_heads": 4, "ffn_hidden": 192},
    "small": {"n_layers": 6, "d_model": 256, "n_heads": 8, "ffn_hidden": 768},
    "base": {"n_layers": 12, "d_model": 768, "n_heads": 12, "ffn_hidden": 3072},
    "large": {"n_layers": 16, "d_model": 1024, "n_heads": 16, "ffn_hidden": 4096},
    "1b": {"n_layers": 22, "d_model": 2048, "n_heads": 16, "ffn_hidden": 5632},
}


def model_preset(name: str, **overrides) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValueError(f"model preset: expected one of {sorted(MODEL_PRESETS)}, got {name!r}")
    return ModelConfig(**{**MODEL_PRESETS[name], **overrides})


@functools.lru_cache(maxsize=16)
def _inv_freq(head_dim: int, base: float, device: torch.device) -> torch.Tensor:
    """RoPE's inverse frequencies (D/2,) in float64, made once per geometry (the streaming step needs them for
    every frame; never written to)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, head_dim) for integer positions. Angles are computed in float64 so that large
    absolute positions (a long streaming episode) keep full float32 precision after the cast."""
    ang = positions.to(torch.float64)[:, None] * _inv_freq(head_dim, float(base), positions.device)[None, :]  # (T, D/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, D), rotate-half layout
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def qkv(self, x: torch.Tensor):
        """(B, T, C) -> q, k, v each (B, H, T, D), before rotary embedding."""
        b, t, _ = x.shape
        q, k, v = self.wqkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, T, D) -> (B, T, C)."""
        b, h, t, d = y.shape
        return self.wo(y.transpose(1, 2).reshape(b, t, h * d))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, cache: SinkWindowCache | None = None, layer: int = 0):
        """x (B, T, C) at the positions cos/sin (T, D) were computed for. Without a cache: causal attention
        over x. With one: x's keys/values go into the cache's `layer` and x attends to what it holds."""
        q, k, v = self.attn.qkv(self.attn_norm(x))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys, values, mask = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.finish(x, y)

    def finish(self, x, y):
        """Residual updates after attention output y (B, H, T, D) has been computed."""
        x = x + self.attn.out(y)
        return x + self.ffn(self.ffn_norm(x))


def _window_mask(p: int, n_frames: int, slot: int, device) -> torch.Tensor:
    """Boolean mask (P, 1 + n_frames*P) for P queries of the frame in `slot`: the sink and the other
    filled slots are visible, the frame's own slot is causal."""
    mask = torch.ones(p, 1 + n_frames * p, dtype=torch.bool, device=device)
    own = slice(1 + slot * p, 1 + (slot + 1) * p)
    mask[:, own] = torch.ones(p, p, dtype=torch.bool, device=device).tril()
    return mask


class SinkWindowCache:
    """Per-layer keys/values for streaming frames with sliding-window attention and an attention sink.

    Fed through `Transformer.hidden_states(ids, n_layers, cache=cache)`: first the start token alone (B, 1),
    then one frame (B, tokens_per_frame) per call. Frame t sits at positions 1 + t*P .. (t+1)*P. Per layer
    the cache holds the sink, the start token's key (at position 0, i.e. unrotated) and value, and a ring
    buffer of the last `window` frames' keys, rotated once at their absolute positions, and values; a new
    frame overwrites the oldest frame's slot. The sink's key is re-rotated each call to sit just before the
    window's first token. Rotary scores depend only on relative positions, so every score a query sees is
    the score it would see with the window laid out from position 0, however long the stream has run.

    `static=True` keeps every tensor at one shape for the whole stream (for the fast path and torch.compile):
    per layer one buffer (B, H, 1 + window*P, D) holds the sink at index 0 and the ring buffer after it, the
    new frame is written in place at a tensor of indices, and one additive float mask (P, 1 + window*P) hides
    the slots not yet filled (exp(-inf) = 0: the same attention as the growing cache, up to rounding) and makes
    the frame's own slot causal. Nothing is concatenated or allocated per step.

    What it computes is sliding-window attention: every token, at every layer, attends to the sink and to
    the tokens of the last `window` frames. Until the window is full this is the plain causal forward over
    the same tokens; after it slides, `windowed_hidden_states` is the exact reference.
    """

    def __init__(self, cfg: ModelConfig, window: int, static: bool = False):
        if window < 1:
            raise ValueError(f"window: expected a positive number of frames, got {window}")
        self.cfg, self.window, self.static = cfg, window, static
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames written since reset
        self.batch: int | None = None  # batch size, fixed by the start token
        self.sink_keys: list[torch.Tensor] = []  # per layer (B, H, 1, D)
        self.sink_values: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []  # per layer (B, H, window*P, D), ring buffer of frames
        self.values: list[torch.Tensor] = []
        self.started = False  # the start token has been written
        self._step: tuple | None = None  # what `update` needs for the tokens of the current call
        self._mask: torch.Tensor | None = None  # static: additive mask (P, 1 + window*P), updated in place

    @property
    def n_layers(self) -> int:
        return len(self.sink_keys)

    def begin(self, idx: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Called by `Transformer.hidden_states` before the blocks run on idx (B, T): checks that idx continues
        the cached sequence and returns the absolute positions (T,) of its tokens."""
        p, dev = self.cfg.tokens_per_frame, idx.device
        b, t = idx.shape
        if not self.started:
            if t != 1:
                raise ValueError(f"cache: expected the start token alone first (1 token), got {t} tokens")
            self.started, self._step, self.batch = True, None, b
            return torch.zeros(1, dtype=torch.long, device=dev)
        if t != p:
            raise ValueError(f"cache: expected one frame of {p} tokens per call, got {t}")
        if n_layers != self.n_layers:
            raise ValueError(f"n_layers: expected {self.n_layers} (the layers the cache was started with), "
                             f"got {n_layers}")
        if b != self.batch:
            raise ValueError(f"cache: expected batch size {self.batch} (as when it was started), got {b}")
        f, n = self.frames, self.window
        first = torch.tensor([max(0, f - n + 1) * p], device=dev)  # just before the window's first token
        scos, ssin = rope_cos_sin(first, self.cfg.head_dim, self.cfg.rope_base)
        slot, filled = f % n, min(f + 1, n)
        if self.static:
            if self._mask is None:  # the sink is always visible, unfilled slots never
                self._mask = torch.full((p, 1 + n * p), float("-inf"), device=dev)
                self._mask[:, 0] = 0.0
                self._causal = torch.full((p, p), float("-inf"), device=dev).triu(1)  # the frame's own slot
            if f > 0:  # the previous frame's slot: now wholly visible
                prev = (f - 1) % n
                self._mask[:, 1 + prev * p: 1 + (prev + 1) * p] = 0.0
            self._mask[:, 1 + slot * p: 1 + (slot + 1) * p] = self._causal
            self._step = (1 + slot * p + torch.arange(p, device=dev), scos, ssin)  # buffer indices of the frame
        else:
            self._step = (slot, filled, _window_mask(p, filled, slot, dev), scos, ssin)
        self.frames += 1
        return 1 + f * p + torch.arange(p, device=dev)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store the current tokens' rotated keys k and values v (B, H, T, D) for `layer`; return the keys,
        values and boolean mask (or None) they attend with."""
        if self._step is None:  # the start token: the sink, which never changes
            self.sink_keys.append(k)
            self.sink_values.append(v)
            b, h, _, d = k.shape
            if self.static:  # index 0: the sink (its key re-rotated every step), then the ring buffer
                self.keys.append(k.new_zeros(b, h, 1 + self.window * self.cfg.tokens_per_frame, d))
                self.values.append(v.new_zeros(b, h, 1 + self.window * self.cfg.tokens_per_frame, d))
                self.values[-1][:, :, :1] = v
                return k, v, None
            self.keys.append(k.new_zeros(b, h, self.window * self.cfg.tokens_per_frame, d))
            self.values.append(v.new_zeros(b, h, self.window * self.cfg.tokens_per_frame, d))
            return k, v, None
        if self.static:
            index, scos, ssin = self._step
            keys, values = self.keys[layer], self.values[layer]
            keys[:, :, :1] = apply_rope(self.sink_keys[layer], scos, ssin)
            keys.index_copy_(2, index, k)
            values.index_copy_(2, index, v)
            return keys, values, self._mask.to(k.dtype)  # (B, H, 1 + window*P, D), mask (P, 1 + window*P)
        slot, filled, mask, scos, ssin = self._step
        p = self.cfg.tokens_per_frame
        self.keys[layer][:, :, slot * p: (slot + 1) * p] = k
        self.values[layer][:, :, slot * p: (slot + 1) * p] = v
        keys = torch.cat([apply_rope(self.sink_keys[layer], scos, ssin), self.keys[layer][:, :, : filled * p]], dim=2)
        values = torch.cat([self.sink_values[layer], self.values[layer][:, :, : filled * p]], dim=2)
        return keys, values, mask  # (B, H, 1 + filled*P, D), mask (P, 1 + filled*P)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, *, n_blocks: int | None = None, lm_head: bool = True):
        """`n_blocks` (default cfg.n_layers) and `lm_head=False` build a trunk; see `trunk`."""
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers if n_blocks is None else n_blocks))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False) if lm_head else None
        cos, sin = rope_cos_sin(torch.arange(cfg.max_seq_len), cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual projections
            if name.endswith(("attn.wo.weight", "ffn.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def set_rope_base(self, base: float):
        """Resolution fine-tuning recipe: a new RoPE base (the paper raises it to 50,000 at 256 px)."""
        self.cfg.rope_base = base
        cos, sin = rope_cos_sin(torch.arange(self.cfg.max_seq_len), self.cfg.head_dim, base)
        self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)

    def trunk(self, n_blocks: int) -> Transformer:
        """A new Transformer with copies of the token embedding, the first `n_blocks` blocks and the final
        norm, and no LM head: what a frozen encoder reading out at most `n_blocks` deep needs. `self` is left
        as it is, and nothing done to the trunk (freezing, loading weights) reaches back to it."""
        if not 1 <= n_blocks <= len(self.layers):
            raise ValueError(f"n_blocks: expected 1..{len(self.layers)} (blocks of the transformer), got {n_blocks}")
        with torch.device("meta"):  # no allocation or random init: every tensor is assigned below
            trunk = Transformer(replace(self.cfg), n_blocks=n_blocks, lm_head=False)
        keep = trunk.state_dict().keys()
        trunk.load_state_dict({k: v.clone() for k, v in self.state_dict().items() if k in keep}, assign=True)
        trunk.rope_cos, trunk.rope_sin = self.rope_cos.clone(), self.rope_sin.clone()
        return trunk

    def _check_ids(self, idx: torch.Tensor, cached: bool):
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx: expected int64 (B, T), got {idx.dtype} with shape {tuple(idx.shape)}")
        if not cached and idx.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"idx: expected at most max_seq_len={self.cfg.max_seq_len} tokens, got {idx.shape[1]}")

    def hidden_states(self, idx: torch.Tensor, n_layers: int | None = None, cache: SinkWindowCache | None = None,
                      all_layers: bool = False) -> torch.Tensor:
        """Residual stream after the first `n_layers` blocks (all by default): (B, T) -> (B, T, C). With
        `all_layers`, the stream after 0 (the token embedding) .. n_layers blocks: (n_layers + 1, B, T, C).

        With a `cache`, idx continues the sequence the cache holds (see SinkWindowCache): its tokens sit at
        the positions the cache gives them, attend to the cached keys/values, and are added to them."""
        n = len(self.layers) if n_layers is None else n_layers
        if not 0 <= n <= len(self.layers):
            raise ValueError(f"n_layers: expected 0..{len(self.layers)} (blocks of this model), got {n}")
        self._check_ids(idx, cached=cache is not None)
        x = self.tok_emb(idx)  # (B, T, C)
        if cache is None:
            cos, sin = self.rope_cos[: idx.shape[1]], self.rope_sin[: idx.shape[1]]
        else:  # positions grow without bound over a stream: tables computed for them
            cos, sin = rope_cos_sin(cache.begin(idx, n), self.cfg.head_dim, self.cfg.rope_base)
        states = [x]
        for i, block in enumerate(self.layers[:n]):
            x = block(x, cos, sin, cache, i)
            if all_layers:
                states.append(x)
        return torch.stack(states) if all_layers else x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, V); with targets (B, T) (-100 ignored) also the mean cross-entropy."""
        if self.output is None:
            raise ValueError("forward: expected a Transformer with its LM head, got a trunk (use hidden_states)")
        logits = self.output(self.norm(self.hidden_states(idx)))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> dict[str, float]:
        """FLOPs per token (PaLM appendix B / nanoGPT): forward = 2N + 4*L*T*C, where N counts every
        matrix a token multiplies through (all parameters but the embedding lookup) and 4*L*T*C is
        attention's QK^T and AV over a context of T; training (forward + backward) is three times that."""
        t = seq_len or self.cfg.max_seq_len
        n = self.num_params(non_embedding=True)
        fwd = 2 * n + 4 * len(self.layers) * t * self.cfg.d_model
        return {"params": float(self.num_params()), "forward": float(fwd), "train": float(3 * fwd)}


def clip_to_sequence(ids: torch.Tensor, cfg: ModelConfig, kind: str = "video", add_end: bool = True) -> torch.Tensor:
    """Token grids (B, T, h, w) -> sequences (B, 1 + T*h*w [+1]): start token, frames in raster order, end."""
    b = ids.shape[0]
    start = torch.full((b, 1), cfg.special_id(f"{kind}_start"), dtype=torch.long, device=ids.device)
    parts = [start, ids.reshape(b, -1).long()]
    if add_end:
        parts.append(torch.full((b, 1), cfg.special_id("end"), dtype=torch.long, device=ids.device))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def windowed_hidden_states(model: Transformer, seq: torch.Tensor, window: int, n_layers: int) -> torch.Tensor:
    """Reference for `SinkWindowCache`, computed layer by layer over the whole history without a cache.

    seq: (B, 1 + F*P) start token then F frames. Each token of frame f attends to the start token (its key
    rotated to sit just before the window's first token) and, causally, to the tokens of frames
    max(0, f-window+1)..f. Returns the residual stream after `n_layers` blocks, (B, 1 + F*P, C)."""
    cfg = model.cfg
    p = cfg.tokens_per_frame
    n_frames = (seq.shape[1] - 1) // p
    x = model.tok_emb(seq)  # (B, L, C)
    cos, sin = rope_cos_sin(torch.arange(seq.shape[1], device=seq.device), cfg.head_dim, cfg.rope_base)
    causal = torch.ones(p, p, dtype=torch.bool, device=seq.device).tril()
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
            mask = torch.ones(p, keys.shape[2], dtype=torch.bool, device=seq.device)  # earlier frames and sink
            mask[:, -p:] = causal  # the frame itself: causal
            out[:, :, 1 + f * p: 1 + (f + 1) * p] = F.scaled_dot_product_attention(
                qr[:, :, 1 + f * p: 1 + (f + 1) * p], keys, vals, attn_mask=mask)
        x = block.finish(x, out)
    return x
