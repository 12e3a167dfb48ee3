"""Discrete image tokenizer: the role the dVAE plays in Toto.

A convolutional autoencoder with 8x spatial downsampling (128 px -> 16x16 tokens) and a discrete
bottleneck: either a vector-quantized codebook (8192 codes by default) kept alive with EMA updates
and dead-code restarts, or finite scalar quantization (FSQ), which has no codebook to collapse.
Frames are tokenized one at a time; a clip of T frames becomes T grids of ids in raster order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from toto_robot.frames import as_frames, to_uint8

QUANTIZERS = ("vq", "fsq")
ENCODERS = ("conv", "light")


@dataclass
class TokenizerConfig:
    quantizer: str = "vq"  # "vq" (EMA codebook) or "fsq"
    codebook_size: int = 8192  # vq only; fsq's size is the product of its levels
    fsq_levels: tuple[int, ...] = (8, 8, 8, 4, 4)  # 8192 codes
    embed_dim: int = 64  # width of the vq code vectors
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per 2x downsampling stage: 3 stages = 8x
    num_res_blocks: int = 1
    image_size: int = 128  # training resolution; encode() accepts any multiple of `downsample`
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_code_threshold: float = 0.5  # restart a code when its EMA count falls below this
    # "conv": the autoencoder's encoder; "light": a cheaper one distilled to give its tokens (toto_robot/distill.py),
    # `light_channels` wide, beside the teacher's quantizer and decoder
    encoder: str = "conv"
    light_channels: int = 32

    def __post_init__(self):
        self.fsq_levels = tuple(self.fsq_levels)
        self.channel_mult = tuple(self.channel_mult)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"TokenizerConfig.quantizer: expected one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.codebook_size < 2:
            raise ValueError(f"TokenizerConfig.codebook_size: expected >= 2, got {self.codebook_size}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"TokenizerConfig.encoder: expected one of {ENCODERS}, got {self.encoder!r}")
        if self.light_channels < 1:
            raise ValueError(f"TokenizerConfig.light_channels: expected >= 1, got {self.light_channels}")
        if not self.fsq_levels or min(self.fsq_levels) < 2:
            raise ValueError(f"TokenizerConfig.fsq_levels: expected levels >= 2, got {self.fsq_levels}")
        if not self.channel_mult:
            raise ValueError("TokenizerConfig.channel_mult: expected at least one downsampling stage, got ()")
        if self.image_size % self.downsample:
            raise ValueError(
                f"TokenizerConfig.image_size: expected a multiple of {self.downsample}, got {self.image_size}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TokenizerConfig.ema_decay: expected in (0, 1), got {self.ema_decay}")

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channel_mult)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def grid(self) -> int:
        """Tokens per side at the training resolution."""
        return self.image_size // self.downsample

    @property
    def tokens_per_frame(self) -> int:
        return self.grid**2


TOKENIZER_PRESETS = {
    "tiny": {"codebook_size": 512, "embed_dim": 32, "channels": 16, "channel_mult": (1, 2, 2), "image_size": 64},
    "small": {"codebook_size": 8192, "embed_dim": 64, "channels": 64, "channel_mult": (1, 2, 2), "image_size": 128},
}


def tokenizer_preset(name: str, **overrides) -> TokenizerConfig:
    if name not in TOKENIZER_PRESETS:
        raise ValueError(f"tokenizer preset: expected one of {sorted(TOKENIZER_PRESETS)}, got {name!r}")
    return TokenizerConfig(**{**TOKENIZER_PRESETS[name], **overrides})


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(min(32, cin // 4) or 1, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(min(32, cout // 4) or 1, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class ConvEncoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig, out_dim: int):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1)]
        for mult in cfg.channel_mult:
            cout = cfg.channels * mult
            layers += [ResBlock(ch, cout)] + [ResBlock(cout, cout) for _ in range(cfg.num_res_blocks - 1)]
            layers.append(nn.Conv2d(cout, cout, 4, stride=2, padding=1))  # 2x down
            ch = cout
        layers += [ResBlock(ch, ch), nn.GroupNorm(min(32, ch // 4) or 1, ch), nn.SiLU(), nn.Conv2d(ch, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class LightEncoder(nn.Module):
    """The deployment encoder: the same grid and code width as ConvEncoder for a fraction of its work. A strided
    patch convolution goes straight to 1/(downsample/2) resolution (no full-resolution blocks, which are most of
    ConvEncoder's multiply-adds), then two residual blocks, one learned 2x downsampling and one block at the
    token grid. Trained by distillation to reproduce a ConvEncoder's latents (toto_robot/distill.py)."""

    def __init__(self, cfg: TokenizerConfig, out_dim: int):
        super().__init__()
        ch, patch = cfg.light_channels, cfg.downsample // 2
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, patch, stride=patch), ResBlock(ch, 2 * ch), ResBlock(2 * ch, 2 * ch),
            nn.Conv2d(2 * ch, 2 * ch, 4, stride=2, padding=1), ResBlock(2 * ch, 2 * ch),
            nn.GroupNorm(min(32, ch // 2) or 1, 2 * ch), nn.SiLU(), nn.Conv2d(2 * ch, out_dim, 1),
        )

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig, in_dim: int):
        super().__init__()
        ch = cfg.channels * cfg.channel_mult[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, ch, 3, padding=1), ResBlock(ch, ch)]
        for mult in reversed(cfg.channel_mult):
            cout = cfg.channels * mult
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, cout, 3, padding=1)]
            layers += [ResBlock(cout, cout) for _ in range(cfg.num_res_blocks)]
            ch = cout
        layers += [nn.GroupNorm(min(32, ch // 4) or 1, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


class EMAVectorQuantizer(nn.Module):
    """Codebook updated by exponential moving averages of assigned vectors (no codebook gradient).

    Codes whose EMA assignment count drops below `dead_code_threshold` are restarted at random encoder
    outputs of the current batch, so codebook usage stays high.
    """

    def __init__(self, num_codes: int, dim: int, decay: float, commitment: float, dead_threshold: float):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.commitment, self.dead_threshold = decay, commitment, dead_threshold
        self.register_buffer("codebook", torch.randn(num_codes, dim) * 0.1)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """(N, D) -> (N,) ids of the nearest code, chunked so N x K distances stay small."""
        cb = self.codebook
        cb_sq = (cb * cb).sum(1)
        out = []
        for zc in z.split(chunk):
            d = cb_sq[None, :] - 2.0 * zc @ cb.t()  # (n, K); |z|^2 is constant per row
            out.append(d.argmin(1))
        return torch.cat(out)

    @torch.no_grad()
    def _init_from(self, z: torch.Tensor):
        idx = torch.randint(0, z.shape[0], (self.num_codes,), device=z.device)
        init = z[idx]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(init, 0)  # every rank starts from rank 0's codes (each rank's batch differs)
        self.codebook.copy_(init)
        self.embed_sum.copy_(init)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor):
        counts = torch.bincount(ids, minlength=self.num_codes).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, ids, z)
        _all_reduce_sum(counts)
        _all_reduce_sum(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        smoothed = (self.cluster_size + 1e-5) / (n + self.num_codes * 1e-5) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            idx = torch.randint(0, z.shape[0], (n_dead,), device=z.device)
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(idx, 0)  # every rank restarts the same codes from rank 0's batch
            fresh = z[idx]
            if dist.is_available() and dist.is_initialized():
                dist.broadcast(fresh, 0)
            self.codebook[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor):
        """z: (N, D) -> (quantized with straight-through gradient, ids, commitment loss)."""
        zf = z.detach().float()
        if self.training and not bool(self.initialized):
            self._init_from(zf)
        ids = self.nearest(zf)
        zq = self.codebook[ids]
        if self.training:
            self._ema_update(zf, ids)
        loss = self.commitment * F.mse_loss(z, zq.to(z.dtype))
        zq = z + (zq.to(z.dtype) - z).detach()
        return zq, ids, loss

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codebook[ids]


class FSQuantizer(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): each latent dim is bounded and rounded to
    one of `levels[i]` values; the code id is the mixed-radix number of the rounded digits."""

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long))
        basis = torch.cumprod(torch.tensor((1,) + tuple(levels[:-1]), dtype=torch.long), 0)
        self.register_buffer("basis", basis)
        self.dim = len(levels)

    def _bound(self, z):
        lv = self.levels.to(z.dtype)
        half = (lv - 1) * (1 - 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.tan(offset / half)  # centres even level counts, as in the FSQ paper's code
        return torch.tanh(z + shift) * half - offset

    def forward(self, z):
        b = self._bound(z)
        q = b + (b.round() - b).detach()  # straight-through rounding
        half_width = (self.levels // 2).to(z.dtype)
        ids = ((q.detach().round() + half_width).long() * self.basis).sum(-1)
        return q / half_width, ids, z.new_zeros(())

    def lookup(self, ids):
        digits = (ids[..., None] // self.basis) % self.levels
        half_width = (self.levels // 2).float()
        return (digits.float() - half_width) / half_width


class Tokenizer(nn.Module):
    """Frames <-> discrete token ids. `encode` (B, T, H, W, 3) -> (B, T, H/8, W/8) ids, `decode` back."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        code_dim = len(cfg.fsq_levels) if cfg.quantizer == "fsq" else cfg.embed_dim
        self.encoder = (ConvEncoder if cfg.encoder == "conv" else LightEncoder)(cfg, code_dim)
        self.decoder = ConvDecoder(cfg, code_dim)
        if cfg.quantizer == "fsq":
            self.quantizer = FSQuantizer(cfg.fsq_levels)
        else:
            self.quantizer = EMAVectorQuantizer(
                cfg.codebook_size, code_dim, cfg.ema_decay, cfg.commitment, cfg.dead_code_threshold
            )

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def _quantize(self, x: torch.Tensor):
        """x: (N, 3, H, W) in [-1, 1] -> (zq (N, C, h, w), ids (N, h, w), aux loss)."""
        z = self.encoder(x)
        n, _c, h, w = z.shape
        zq, ids, aux = self.quantizer(rearrange(z, "n c h w -> (n h w) c"))
        zq = rearrange(zq, "(n h w) c -> n c h w", n=n, h=h, w=w)
        return zq, ids.view(n, h, w), aux

    def forward(self, frames) -> tuple[torch.Tensor, dict[str, float]]:
        """Training step: frames (B, T, H, W, 3) -> (loss, metrics with psnr and codebook usage)."""
        x = as_frames(frames, size_multiple=self.cfg.downsample).to(self._device)
        x = rearrange(x, "b t c h w -> (b t) c h w")
        zq, ids, aux = self._quantize(x)
        recon = self.decoder(zq)
        rec_loss = F.mse_loss(recon, x)
        loss = rec_loss + aux
        metrics = {
            "loss": loss.item(),
            "recon_mse": rec_loss.item(),
            "psnr": psnr(recon.detach(), x),
            "codebook_usage": codebook_usage(ids, self.vocab_size),
        }
        return loss, metrics

    @property
    def _device(self):
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, frames) -> torch.Tensor:
        """Frames (B, T, H, W, 3) uint8 or float in [0, 1] -> token ids (B, T, H/8, W/8), int64."""
        x = as_frames(frames, size_multiple=self.cfg.downsample).to(self._device)
        b = x.shape[0]
        _, ids, _ = self._quantize(rearrange(x, "b t c h w -> (b t) c h w"))
        return rearrange(ids, "(b t) h w -> b t h w", b=b)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T, h, w) -> frames (B, T, 8h, 8w, 3) uint8."""
        if ids.ndim != 4:
            raise ValueError(f"ids: expected rank 4 (B, T, h, w), got shape {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids: expected integers in [0, {self.vocab_size}), got {ids.dtype} "
                             f"in [{ids.min().item()}, {ids.max().item()}]")
        b = ids.shape[0]
        z = self.quantizer.lookup(rearrange(ids.to(self._device), "b t h w -> (b t) h w"))
        x = self.decoder(rearrange(z, "n h w c -> n c h w").float())
        return rearrange(to_uint8(x), "(b t) h w c -> b t h w c", b=b)

    @torch.no_grad()
    def reconstruct(self, frames) -> torch.Tensor:
        return self.decode(self.encode(frames))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(pred.float().clamp(-1, 1), target.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-10))


def codebook_usage(ids: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the codebook used by a batch of ids."""
    return torch.unique(ids).numel() / vocab_size

