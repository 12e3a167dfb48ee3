"""The diffusion action head: shapes, config errors, fitting conditioned trajectories, checkpoints, seeds."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from policies.diffusion import DiffusionHead, DiffusionHeadConfig, diffusion_preset

COND, ACTION = 16, 2


def _head(seed: int = 0, **overrides) -> DiffusionHead:
    torch.manual_seed(seed)
    return DiffusionHead(COND, ACTION, diffusion_preset("tiny", **overrides))


def test_shapes_range_and_gradients():
    head = _head()
    h = head.cfg.horizon
    loss = head.loss(torch.randn(5, COND), torch.rand(5, h, ACTION) * 2 - 1)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())

    out = head.eval().sample(torch.randn(3, COND), torch.Generator().manual_seed(0))
    assert out.shape == (3, h, ACTION) and not out.requires_grad
    assert out.abs().max() <= 1  # DDIM clips the predicted clean chunk at every step

    flops = head.flops_per_sample()
    weights = sum(m.weight.numel() for m in head.unet.modules()
                  if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)))
    assert flops["forward"] > 2 * weights  # conv weights act at several positions each
    assert flops["sample"] == head.cfg.num_inference_steps * flops["forward"]


def test_default_head_shapes():
    head = DiffusionHead(512, 7, DiffusionHeadConfig())  # horizon 16 through two halvings: 16 -> 8 -> 4
    assert head.loss(torch.randn(2, 512), torch.zeros(2, 16, 7)).ndim == 0
    assert head.eval().sample(torch.randn(1, 512)).shape == (1, 16, 7)


@pytest.mark.parametrize("overrides, field", [
    ({"horizon": 10}, "horizon"),  # not a multiple of 2 ** (3 - 1)
    ({"horizon": 0}, "horizon"),
    ({"down_dims": ()}, "down_dims"),
    ({"down_dims": (64, 100)}, "down_dims"),  # 100 is not a multiple of n_groups=8
    ({"kernel_size": 4}, "kernel_size"),
    ({"step_embed_dim": 7}, "step_embed_dim"),  # odd: sin and cos halves
    ({"num_inference_steps": 101}, "num_inference_steps"),
    ({"beta_schedule": "cosine"}, "beta_schedule"),
])
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"DiffusionHeadConfig\.{field}: expected .*, got"):
        DiffusionHeadConfig(**overrides)


def test_horizon_error_says_what_is_allowed():
    with pytest.raises(ValueError, match=r"horizon: expected a multiple of 4 .* got 10"):
        DiffusionHeadConfig(horizon=10)
    DiffusionHeadConfig(horizon=12)  # a multiple of 4 other than 16 is fine


def test_bad_inputs_are_rejected():
    head = _head()
    h = head.cfg.horizon
    with pytest.raises(ValueError, match="expected actions"):
        head.loss(torch.randn(2, COND), torch.zeros(2, h + 1, ACTION))
    with pytest.raises(ValueError, match="expected cond"):
        head.sample(torch.randn(2, COND + 1))
    with pytest.raises(ValueError, match="cond_dim and action_dim"):
        DiffusionHead(0, ACTION, head.cfg)
    with pytest.raises(ValueError, match="diffusion preset"):
        diffusion_preset("huge")


def test_fits_conditioned_trajectories():
    """8 conditioning vectors, each mapped to its own smooth trajectory. After 200 steps the loss has dropped
    and DDIM samples land on the trajectory of their condition: a head that ignored its conditioning would
    learn the mixture and pick the right one of the 8 for about 1 sample in 8."""
    head = _head()
    k, h = 8, head.cfg.horizon
    cond = torch.randn(k, COND)
    s = torch.linspace(0, 1, h)
    basis = torch.stack([torch.cos(math.pi * f * s) for f in range(3)], -1)  # (H, 3)
    traj = torch.einsum("hf,kfa->kha", basis, torch.randn(k, 3, ACTION))  # (K, H, A)
    traj = 0.8 * traj / traj.abs().amax((1, 2), keepdim=True)
    dist = ((traj[:, None] - traj[None]) ** 2).mean((2, 3))  # (K, K) mean squared distance
    nearest_other = dist.masked_fill(torch.eye(k, dtype=torch.bool), math.inf).min(1).values  # (K,)

    steps, lr = 200, 1e-2
    opt = torch.optim.AdamW(head.parameters(), lr=lr, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    idx = torch.arange(64) % k
    losses = []
    for _ in range(steps):
        loss = head.loss(cond[idx], traj[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < 0.1 * sum(losses[:20]), (losses[:20], losses[-20:])

    n = 8  # samples per condition
    label = torch.arange(n * k) % k
    out = head.eval().sample(cond[label], torch.Generator().manual_seed(1))  # (nK, H, A)
    err = ((out[:, None] - traj[None]) ** 2).mean((2, 3))  # (nK, K): each sample against each trajectory
    accuracy = (err.argmin(1) == label).float().mean().item()
    assert accuracy >= 0.8, accuracy  # chance is 1/8
    own = err[torch.arange(n * k), label].view(n, k).median(0).values  # (K,) typical error per condition
    assert (own < 0.25 * nearest_other).all(), (own, nearest_other)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    head = _head(seed=0)
    fresh = _head(seed=1).eval()
    cond = torch.randn(4, COND)
    assert not torch.allclose(head.eval().sample(cond, torch.Generator().manual_seed(3)),
                              fresh.sample(cond, torch.Generator().manual_seed(3)))
    save_file(head.state_dict(), tmp_path / "head.safetensors")  # tensors only: the schedulers are config
    fresh.load_state_dict(load_file(tmp_path / "head.safetensors"))
    assert torch.equal(head.sample(cond, torch.Generator().manual_seed(3)),
                       fresh.sample(cond, torch.Generator().manual_seed(3)))


def test_sampling_is_reproducible_per_seed():
    head = _head().eval()
    cond = torch.randn(2, COND)
    rng = torch.get_rng_state()
    a = head.sample(cond, torch.Generator().manual_seed(7))
    b = head.sample(cond, torch.Generator().manual_seed(7))
    c = head.sample(cond, torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded sample leaves the global generator alone
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3
