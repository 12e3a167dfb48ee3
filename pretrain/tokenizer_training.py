"""Training the tokenizer on frames streamed from the source mixture.

Clips come from `Mixture` (sequential decoding); their frames go into a shuffle buffer and each step
trains on a random batch of buffered frames, so one batch mixes many videos. Logs reconstruction
PSNR and codebook usage (console, TensorBoard, `metrics.jsonl`); writes a tokenizer checkpoint.

Under torchrun the tokenizer trains with DDP: every rank draws its own clips (its mixture and buffer are
seeded by the seed and its rank), gradients are averaged, and the EMA codebook statistics, dead-code
restarts and the codebook's initialisation are shared from rank 0 (`EMAVectorQuantizer`), so the ranks
hold one codebook. Rank 0 logs and writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pretrain.data import Mixture, Source
from pretrain.shards import save_tokenizer
from toto_robot.image_metrics import psnr_uint8
from toto_robot.metrics_log import MetricsLog
from toto_robot.parallel import init_distributed, parallelize
from toto_robot.report import save_reconstructions
from toto_robot.schedules import warmup_cosine
from toto_robot.tokenizer import Tokenizer, TokenizerConfig, codebook_usage


class FrameBuffer:
    """A shuffle buffer of frames: new clips overwrite random slots once it is full."""

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity, self.rng = capacity, rng
        self.frames: np.ndarray | None = None
        self.size = 0

    def add(self, clip: np.ndarray):
        if self.frames is None:
            self.frames = np.empty((self.capacity, *clip.shape[1:]), dtype=clip.dtype)
        for frame in clip:
            slot = self.size if self.size < self.capacity else int(self.rng.integers(self.capacity))
            self.frames[slot] = frame
            self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int) -> np.ndarray:
        return self.frames[self.rng.integers(0, self.size, size=n)]


def train_tokenizer(sources: list[Source], tok_cfg: TokenizerConfig, out: str | Path, *, steps: int = 300,
                    batch_size: int = 16, lr: float = 2e-3, seed: int = 0, buffer_frames: int = 1024,
                    clips_per_step: int = 1, log_every: int = 20, strict: bool = False,
                    progress: bool = True) -> dict:
    """Train a tokenizer on the mixture of `sources`; checkpoint in `out/checkpoint`. Returns metrics.
    The learning rate warms up over the first 5% of the steps (at least one), then decays on a cosine."""
    for name, value in (("steps", steps), ("batch_size", batch_size), ("buffer_frames", buffer_frames),
                        ("clips_per_step", clips_per_step), ("log_every", log_every)):
        if value < 1:
            raise ValueError(f"tokenizer_train.{name}: expected a positive integer, found {value}")
    if not lr > 0:
        raise ValueError(f"tokenizer_train.lr: expected a learning rate > 0, found {lr}")
    if sources[0].size % tok_cfg.downsample:
        raise ValueError(f"data.resolution: expected a multiple of the tokenizer's downsampling "
                         f"{tok_cfg.downsample}, got {sources[0].size}")
    out = Path(out)
    rank, world, device = init_distributed()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # the same initial weights on every rank
    # Rank 0 (and a single process) keeps the plain seed; rank r draws from a seed derived from (seed, r).
    data_seed = seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    rng = np.random.default_rng(data_seed)
    mixture = Mixture(sources, seed=data_seed, strict=strict)
    buffer = FrameBuffer(buffer_frames, rng)
    while buffer.size < min(buffer_frames, 4 * batch_size):  # a warm buffer before the first step
        buffer.add(next(mixture)[1])
    tok = Tokenizer(tok_cfg).to(device)
    model = parallelize(tok, "ddp") if world > 1 else tok
    opt = torch.optim.AdamW(tok.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, round(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps))
    tok.train()
    rows = []
    with MetricsLog(out, prefix="tokenizer/") if rank == 0 else contextlib.nullcontext() as log:
        for step in (bar := tqdm(range(steps), desc="tokenizer", disable=not progress or rank > 0)):
            for _ in range(clips_per_step):
                buffer.add(next(mixture)[1])
            frames = buffer.sample(batch_size)[:, None]  # (B, 1, H, W, 3): one-frame clips
            loss, metrics = model(frames)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            row = {"step": step + 1, **metrics}
            rows.append(row)
            if rank > 0:
                continue
            log.log(row)
            bar.set_postfix(psnr=f"{metrics['psnr']:.1f}", usage=f"{metrics['codebook_usage']:.2f}")
            if (step + 1) % log_every == 0 or step + 1 == steps:
                tqdm.write(f"step {step + 1:>6} | loss {metrics['loss']:.4f} | PSNR {metrics['psnr']:.2f} dB | "
                           f"codebook usage {metrics['codebook_usage']:.3f}")
    tok.eval()
    check = buffer.sample(min(64, buffer.size))[:, None]
    ids = tok.encode(check).cpu()
    recon = tok.decode(ids).cpu().numpy()
    ckpt = out / "checkpoint"
    results = {"checkpoint": str(ckpt.resolve()), "steps": steps, "psnr_last": rows[-1]["psnr"],
               "psnr_check": psnr_uint8(recon, check), "codebook_usage_check": codebook_usage(ids, tok.vocab_size),
               "skipped": mixture.skips.counts(), "world_size": world}
    if rank == 0:
        save_reconstructions(out / "reconstructions.png", check[:8, 0], recon[:8, 0],
                             f"buffered frames, PSNR {psnr_uint8(recon, check):.1f} dB")
        save_tokenizer(ckpt, tok.cpu(), {"trained_on": [s.name for s in sources], "steps": steps})
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if world > 1:
        dist.barrier()  # the checkpoint is written before any rank goes on
    return results
