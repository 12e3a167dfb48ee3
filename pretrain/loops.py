"""Small single-process training loops for the tokenizer and the transformer.

They serve the demo and the tests; the full trainer (schedules, accumulation, DDP/FSDP, resume) builds
on the same steps."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from toto_robot.model import Transformer, clip_to_sequence
from toto_robot.tokenizer import Tokenizer


def train_tokenizer(tokenizer: Tokenizer, clips: np.ndarray, steps: int, batch_size: int = 8, lr: float = 2e-3,
                    seed: int = 0, desc: str = "tokenizer") -> list[dict]:
    """clips: (N, T, H, W, 3) uint8; samples `batch_size` random frames per step."""
    frames = clips.reshape(-1, 1, *clips.shape[2:])  # every frame is a one-frame clip
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(tokenizer.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    tokenizer.train()
    history = []
    for step in (bar := tqdm(range(steps), desc=desc)):
        loss, metrics = tokenizer(frames[rng.choice(len(frames), batch_size)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, **metrics})
        bar.set_postfix(psnr=f"{metrics['psnr']:.1f}", usage=f"{metrics['codebook_usage']:.2f}")
    tokenizer.eval()
    return history


def train_lm(model: Transformer, ids: torch.Tensor, steps: int, batch_size: int = 8, lr: float = 3e-3,
             seed: int = 0, desc: str = "pretrain") -> list[dict]:
    """ids: (N, T, h, w) token grids of N clips; next-token cross-entropy on start + frames + end."""
    seqs = clip_to_sequence(ids, model.cfg)
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    history = []
    for step in (bar := tqdm(range(steps), desc=desc)):
        batch = seqs[torch.randint(0, len(seqs), (batch_size,), generator=gen)]
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return history
