"""Diffusion action head (Chi et al., Diffusion Policy): a conditional 1-D U-Net denoises an action chunk.

Conditioning is one global vector per sample (the policy's pooled frozen-encoder features and proprio).
Training (`loss`): a normalized chunk (B, H, A) in [-1, 1] is noised at a random DDPM step and the U-Net,
given the step and the conditioning, predicts the noise (epsilon); the loss is the MSE to the true noise.
Sampling (`sample`): DDIM (eta = 0, deterministic given its starting noise) from Gaussian noise in
`num_inference_steps` steps, the predicted clean chunk clipped to [-1, 1] at every step.

The schedules are diffusers' DDPMScheduler (training) and DDIMScheduler (sampling), sharing one set of betas,
as in diffusion_policy and LeRobot. They are built from this config, never downloaded, and hold no weights:
the head's state_dict is the U-Net alone, so a safetensors checkpoint holds it and nothing is pickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclass
class DiffusionHeadConfig:
    horizon: int = 16  # actions per predicted chunk; every U-Net level but the last halves it
    down_dims: tuple[int, ...] = (64, 128, 256)  # U-Net widths, one per level
    kernel_size: int = 5  # odd, so convolutions keep the chunk's length
    n_groups: int = 8  # GroupNorm groups; must divide every width
    step_embed_dim: int = 64  # sinusoidal diffusion-step embedding width
    num_train_timesteps: int = 100
    num_inference_steps: int = 10  # DDIM steps, evenly spaced over the training steps
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True  # clip the predicted clean chunk to [-1, 1] at every sampling step

    def __post_init__(self):
        self.down_dims = tuple(self.down_dims)
        for name in ("horizon", "kernel_size", "n_groups", "num_train_timesteps", "num_inference_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiffusionHeadConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if not self.down_dims or any(d < 1 or d % self.n_groups for d in self.down_dims):
            raise ValueError(f"DiffusionHeadConfig.down_dims: expected one or more widths, each a positive multiple "
                             f"of n_groups={self.n_groups}, got {self.down_dims}")
        factor = 2 ** (len(self.down_dims) - 1)
        if self.horizon % factor:
            raise ValueError(f"DiffusionHeadConfig.horizon: expected a multiple of {factor} (down_dims={self.down_dims} "
                             f"halves it {len(self.down_dims) - 1} times), got {self.horizon}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"DiffusionHeadConfig.kernel_size: expected an odd size, got {self.kernel_size}")
        if self.step_embed_dim < 4 or self.step_embed_dim % 2:
            raise ValueError(f"DiffusionHeadConfig.step_embed_dim: expected an even size >= 4, got {self.step_embed_dim}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"DiffusionHeadConfig.num_inference_steps: expected 1..num_train_timesteps="
                             f"{self.num_train_timesteps}, got {self.num_inference_steps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"DiffusionHeadConfig.beta_schedule: expected one of {BETA_SCHEDULES}, "
                             f"got {self.beta_schedule!r}")


# `small` is the default (CPU-friendly); `paper` is diffusion_policy's / LeRobot's image U-Net; `tiny` is for tests.
DIFFUSION_PRESETS: dict[str, dict] = {
    "tiny": {"horizon": 8, "down_dims": (16, 32), "n_groups": 4, "step_embed_dim": 16},
    "small": {},
    "paper": {"down_dims": (512, 1024, 2048), "step_embed_dim": 128},
}


def diffusion_preset(name: str, **overrides) -> DiffusionHeadConfig:
    if name not in DIFFUSION_PRESETS:
        raise ValueError(f"diffusion preset: expected one of {sorted(DIFFUSION_PRESETS)}, got {name!r}")
    return DiffusionHeadConfig(**{**DIFFUSION_PRESETS[name], **overrides})


class SinusoidalStepEmbedding(nn.Module):
    """Diffusion steps (B,) -> (B, dim): sin and cos at frequencies spaced geometrically from 1 to 1/10000."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)  # rebuilt from the config, not checkpointed

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None]  # (B, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, dim)


class ConvBlock(nn.Sequential):
    """Conv1d + GroupNorm + Mish over the time axis, length preserving: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.GroupNorm(groups, c_out), nn.Mish())


class FiLMResBlock(nn.Module):
    """Two conv blocks; between them the conditioning sets a per-channel scale and bias (FiLM, Perez et al.);
    a 1x1 convolution carries the residual when the width changes."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, kernel, groups)
        self.conv2 = ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T), cond (B, D_c) -> (B, C_out, T)."""
        scale, bias = self.film(cond)[..., None].chunk(2, dim=1)  # (B, C_out, 1) each
        h = (1 + scale) * self.conv1(x) + bias  # scale predicted around 1: an untrained block passes features on
        return self.conv2(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """diffusion_policy's denoiser: noisy chunk (B, H, A), steps (B,), conditioning (B, D) -> noise (B, H, A).

    The step embedding (sinusoidal + MLP) concatenated with the conditioning drives FiLM in every residual
    block. Down path: per level two blocks, then a stride-2 conv halving T (all levels but the last);
    two middle blocks; up path: concatenate the skip of the current resolution, two blocks, then a
    transposed conv doubling T. As in diffusion_policy, the finest level's skip is not used (its features
    reach the up path through the down path)."""

    def __init__(self, action_dim: int, cond_dim: int, cfg: DiffusionHeadConfig):
        super().__init__()
        e, dims = cfg.step_embed_dim, cfg.down_dims
        self.step_embed = nn.Sequential(SinusoidalStepEmbedding(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        block = partial(FiLMResBlock, cond_dim=e + cond_dim, kernel=cfg.kernel_size, groups=cfg.n_groups)
        widths = (action_dim, *dims)
        self.down = nn.ModuleList()
        for i in range(len(dims)):
            last = i == len(dims) - 1
            halve = nn.Identity() if last else nn.Conv1d(dims[i], dims[i], 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(widths[i], dims[i]), block(dims[i], dims[i]), halve]))
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        for i in reversed(range(1, len(dims))):  # level i's output (and skip) -> level i-1's resolution and width
            double = nn.ConvTranspose1d(dims[i - 1], dims[i - 1], 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([block(2 * dims[i], dims[i - 1]), block(dims[i - 1], dims[i - 1]), double]))
        self.final = nn.Sequential(ConvBlock(dims[0], dims[0], cfg.kernel_size, cfg.n_groups),
                                   nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = torch.cat([self.step_embed(t), cond], dim=-1)  # (B, E + D)
        x = x.transpose(1, 2)  # (B, A, H): action dims are channels, convolutions run over time
        skips = []
        for res1, res2, halve in self.down:
            x = res2(res1(x, c), c)  # (B, C_i, H / 2**i)
            skips.append(x)
            x = halve(x)
        for res in self.mid:
            x = res(x, c)
        for res1, res2, double in self.up:
            x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 C_i, H / 2**i)
            x = double(res2(res1(x, c), c))  # (B, C_{i-1}, H / 2**(i-1))
        return self.final(x).transpose(1, 2)  # (B, H, A)


class DiffusionHead(nn.Module):
    """Conditioning (B, cond_dim) -> action chunk (B, horizon, action_dim) in [-1, 1], by denoising.

    No dropout and no running statistics (GroupNorm), so train and eval modes compute the same function."""

    def __init__(self, cond_dim: int, action_dim: int, cfg: DiffusionHeadConfig):
        super().__init__()
        if cond_dim < 1 or action_dim < 1:
            raise ValueError(f"DiffusionHead: expected positive cond_dim and action_dim, got {cond_dim}, {action_dim}")
        self.cfg, self.cond_dim, self.action_dim = cfg, cond_dim, action_dim
        self.unet = ConditionalUnet1D(action_dim, cond_dim, cfg)
        schedule = {"num_train_timesteps": cfg.num_train_timesteps, "beta_schedule": cfg.beta_schedule,
                    "prediction_type": "epsilon", "clip_sample": cfg.clip_sample, "clip_sample_range": 1.0}
        self.train_scheduler = DDPMScheduler(**schedule)
        self.sample_scheduler = DDIMScheduler(**schedule)

    def _check(self, cond: torch.Tensor, actions: torch.Tensor | None = None) -> None:
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"DiffusionHead: expected cond (B, {self.cond_dim}), got {tuple(cond.shape)}")
        chunk = (self.cfg.horizon, self.action_dim)
        if actions is not None and (actions.ndim != 3 or tuple(actions.shape[1:]) != chunk
                                    or actions.shape[0] != cond.shape[0]):
            raise ValueError(f"DiffusionHead: expected actions ({cond.shape[0]}, {chunk[0]}, {chunk[1]}), "
                             f"got {tuple(actions.shape)}")

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """cond (B, D), actions (B, H, A) normalized to [-1, 1] -> MSE between predicted and true noise."""
        self._check(cond, actions)
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)  # (B,)
        noisy = self.train_scheduler.add_noise(actions, noise, t)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        return F.mse_loss(self.unet(noisy, t, cond), noise)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """cond (B, D) -> chunk (B, H, A) in [-1, 1]. The starting noise is drawn with `generator` (on its own
        device, then moved), so a seeded generator gives the same chunk on any device; DDIM adds no noise after."""
        self._check(cond)
        shape = (cond.shape[0], self.cfg.horizon, self.action_dim)
        noise_device = generator.device if generator is not None else cond.device
        x = torch.randn(shape, generator=generator, device=noise_device, dtype=cond.dtype).to(cond.device)
        self.sample_scheduler.set_timesteps(self.cfg.num_inference_steps)
        for t in self.sample_scheduler.timesteps:
            steps = torch.full((shape[0],), int(t), device=cond.device)  # (B,)
            eps = self.unet(x, steps, cond)  # (B, H, A)
            x = self.sample_scheduler.step(eps, int(t), x).prev_sample
        return x

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> dict[str, float]:
        """FLOPs per chunk. Each conv / linear layer costs 2 * (weights) * (positions each weight acts at): a
        conv's output length, a transposed conv's input length, 1 for a linear layer; norms and activations
        are left out. `sample` runs the U-Net num_inference_steps times; a training step (forward and
        backward) costs about three forwards."""
        flops = []

        def count(module, inputs, output):
            positions = inputs[0].shape[-1] if isinstance(module, nn.ConvTranspose1d) else (
                output.shape[-1] if isinstance(module, nn.Conv1d) else 1)
            flops.append(2 * module.weight.numel() * positions)

        layers = [m for m in self.unet.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear))]
        hooks = [m.register_forward_hook(count) for m in layers]
        try:
            with torch.no_grad():
                p = next(self.parameters())
                x = torch.zeros(1, self.cfg.horizon, self.action_dim, device=p.device, dtype=p.dtype)
                self.unet(x, torch.zeros(1, device=p.device), torch.zeros(1, self.cond_dim, device=p.device,
                                                                           dtype=p.dtype))
        finally:
            for h in hooks:
                h.remove()
        fwd = float(sum(flops))
        return {"params": float(self.num_params()), "forward": fwd, "sample": self.cfg.num_inference_steps * fwd,
                "train": 3 * fwd}
