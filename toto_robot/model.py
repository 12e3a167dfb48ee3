"""LLaMA-style causal transformer over visual tokens (pre-norm RMSNorm, SwiGLU, rotary embeddings, SDPA).

Sequences are clips: a start token (video or image) followed by frames of `tokens_per_frame` ids in
raster order, then an end token. The vocabulary is the tokenizer's codebook plus three special tokens.
Parallelism (DDP / FSDP / compile) is applied from outside, by `toto_robot.parallel`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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


def rope_cos_sin(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, head_dim) for integer positions. Angles are computed in float64 so that large
    absolute positions (a long streaming episode) keep full float32 precision after the cast."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
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

    def forward(self, x, cos, sin):
        q, k, v = self.attn.qkv(self.attn_norm(x))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.finish(x, y)

    def finish(self, x, y):
        """Residual updates after attention output y (B, H, T, D) has been computed by the caller."""
        x = x + self.attn.out(y)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
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

    def _check_ids(self, idx: torch.Tensor):
        if idx.ndim != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx: expected int64 (B, T), got {idx.dtype} with shape {tuple(idx.shape)}")
        if idx.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"idx: expected at most max_seq_len={self.cfg.max_seq_len} tokens, got {idx.shape[1]}")

    def hidden_states(self, idx: torch.Tensor, n_layers: int | None = None) -> torch.Tensor:
        """Residual stream after the first `n_layers` blocks (all by default): (B, T) -> (B, T, C)."""
        self._check_ids(idx)
        t = idx.shape[1]
        x = self.tok_emb(idx)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        for block in self.layers[: self.cfg.n_layers if n_layers is None else n_layers]:
            x = block(x, cos, sin)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, V); with targets (B, T) (-100 ignored) also the mean cross-entropy."""
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
        fwd = 2 * n + 4 * self.cfg.n_layers * t * self.cfg.d_model
        return {"params": float(self.num_params()), "forward": float(fwd), "train": float(3 * fwd)}


def clip_to_sequence(ids: torch.Tensor, cfg: ModelConfig, kind: str = "video", add_end: bool = True) -> torch.Tensor:
    """Token grids (B, T, h, w) -> sequences (B, 1 + T*h*w [+1]): start token, frames in raster order, end."""
    b = ids.shape[0]
    start = torch.full((b, 1), cfg.special_id(f"{kind}_start"), dtype=torch.long, device=ids.device)
    parts = [start, ids.reshape(b, -1).long()]
    if add_end:
        parts.append(torch.full((b, 1), cfg.special_id("end"), dtype=torch.long, device=ids.device))
    return torch.cat(parts, dim=1)
