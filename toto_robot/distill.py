"""A lighter deployment encoder distilled to give a trained tokenizer's tokens (`toto-distill-tokenizer`).

The tokenizer's convolutional encoder is most of a streaming step on a CPU (the small preset: ~46 ms of ~70 at
128 px, 1 thread). The student (`TokenizerConfig(encoder="light")`, toto_robot/tokenizer.py LightEncoder) maps
frames to the same grid of code vectors with a fraction of the multiply-adds; the teacher's codebook (or FSQ
levels) and decoder are copied unchanged, so the student's ids mean what the teacher's mean and everything
trained on the teacher's tokens (a Toto transformer, a BC head) reads them. Training regresses the teacher's
pre-quantization latents (MSE, relative to their variance) and, for a codebook, adds a cross-entropy over the
codes whose logits are the negative squared distances to them (scaled by the teacher's mean quantization
error), so the nearest code is what is learned, not only the vector.

Frames come from the configured sources like the tokenizer's own training (a shuffle buffer of decoded clips,
pretrain/tokenizer_training.py); the items held out by the pretraining split's hash (pretrain/shards.py) are
never trained on and give the reported token agreement. The student is only lossy where a latent lies near the
boundary of two codes: its agreement is measured and recorded, never assumed, beside two references: the
agreement of always answering the teacher's most frequent code, and the teacher's codebook usage.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from pretrain.data import Mixture, Source
from pretrain.shards import held_out_items
from pretrain.tokenizer_training import FrameBuffer
from toto_robot.checkpoint import save_tokenizer
from toto_robot.fast import token_agreement
from toto_robot.frames import as_frames
from toto_robot.metrics_log import MetricsLog
from toto_robot.schedules import warmup_cosine
from toto_robot.tokenizer import EMAVectorQuantizer, Tokenizer


def student_of(teacher: Tokenizer, channels: int) -> Tokenizer:
    """A tokenizer with a LightEncoder `channels` wide and the teacher's quantizer and decoder (copied)."""
    if teacher.cfg.encoder != "conv":
        raise ValueError(f"teacher: expected a tokenizer with the conv encoder, got encoder={teacher.cfg.encoder!r}")
    student = Tokenizer(replace(teacher.cfg, encoder="light", light_channels=channels))
    student.quantizer.load_state_dict(teacher.quantizer.state_dict())
    student.decoder.load_state_dict(teacher.decoder.state_dict())
    return student.eval()


def split_items(source: Source, fraction: float) -> tuple[Source, Source]:
    """(training, held-out) copies of a source, items assigned by the pretraining split (pretrain/shards.py)."""
    items = source.items()
    held = held_out_items([source.item_key(i) for i in items], np.ones(len(items)), fraction)
    train, test = copy.copy(source), copy.copy(source)
    train._items = [i for i, h in zip(items, held) if not h]
    test._items = [i for i, h in zip(items, held) if h]
    return train, test


def _inputs(tok: Tokenizer, frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) in [-1, 1], as the tokenizer sees them."""
    x = as_frames(frames[:, None], size_multiple=tok.cfg.downsample)
    return rearrange(x, "n 1 c h w -> n c h w")


def _median_ms(fn, x: torch.Tensor, reps: int = 10) -> float:
    fn(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


@torch.no_grad()
def evaluate(teacher: Tokenizer, student: Tokenizer, frames: np.ndarray, batch: int = 64) -> dict:
    """Token agreement of the student with the teacher on `frames` (N, H, W, 3), and the references."""
    chunks = [frames[i : i + batch, None] for i in range(0, len(frames), batch)]  # (n, 1, H, W, 3) clips
    t = torch.cat([teacher.encode(c).flatten() for c in chunks])
    s = torch.cat([student.encode(c).flatten() for c in chunks])
    counts = torch.bincount(t, minlength=teacher.vocab_size)
    return {"token_agreement": token_agreement(s, t), "majority_code_agreement": float(counts.max() / t.numel()),
            "teacher_codes_used": int((counts > 0).sum()), "frames": len(frames), "tokens": int(t.numel())}


def distill_tokenizer(teacher: Tokenizer, sources: list[Source], out: str | Path, *, channels: int = 32,
                      steps: int = 1000, batch_size: int = 32, lr: float = 2e-3, ce_weight: float = 1.0,
                      held_out: float = 0.1, eval_frames: int = 256, buffer_frames: int = 1024,
                      clips_per_step: int = 1, seed: int = 0, strict: bool = False, log_every: int = 50,
                      progress: bool = True, extra: dict | None = None) -> dict:
    """Train a LightEncoder student of `teacher` on the sources' training items; checkpoint in `out/checkpoint`
    (a tokenizer checkpoint: student encoder, teacher quantizer and decoder) and `out/results.json`."""
    for name, value in (("channels", channels), ("steps", steps), ("batch_size", batch_size),
                        ("eval_frames", eval_frames), ("buffer_frames", buffer_frames),
                        ("clips_per_step", clips_per_step), ("log_every", log_every)):
        if value < 1:
            raise ValueError(f"distill.{name}: expected a positive integer, found {value}")
    if not lr > 0 or ce_weight < 0 or not 0 < held_out < 1:
        raise ValueError(f"distill: expected lr > 0, ce_weight >= 0 and 0 < held_out < 1, found lr={lr}, "
                         f"ce_weight={ce_weight}, held_out={held_out}")
    if sources[0].size % teacher.cfg.downsample:
        raise ValueError(f"data.resolution: expected a multiple of the tokenizer's downsampling "
                         f"{teacher.cfg.downsample}, got {sources[0].size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = teacher.cpu().eval().requires_grad_(False)
    torch.manual_seed(seed)
    student = student_of(teacher, channels)
    splits = [split_items(s, held_out) for s in sources]
    train_sources, test_sources = [a for a, _ in splits], [b for _, b in splits]
    rng = np.random.default_rng(seed)
    test_buffer = FrameBuffer(eval_frames, rng)
    test_mixture = Mixture(test_sources, seed=seed + 1, strict=strict)
    for _ in range(64 * eval_frames):  # frames from many held-out clips, at most eval_frames kept
        if test_buffer.size >= eval_frames:
            break
        test_buffer.add(next(test_mixture)[1])
    mixture = Mixture(train_sources, seed=seed, strict=strict)
    buffer = FrameBuffer(buffer_frames, rng)
    while buffer.size < min(buffer_frames, 4 * batch_size):
        buffer.add(next(mixture)[1])

    vq = isinstance(teacher.quantizer, EMAVectorQuantizer)
    with torch.no_grad():  # the scales: the latents' variance, the teacher's mean squared quantization error
        z0 = teacher.encoder(_inputs(teacher, buffer.sample(min(buffer.size, 256))))
        flat0 = rearrange(z0, "n c h w -> (n h w) c")
        z_var = float(flat0.var(0).mean())
        if vq:
            cb = teacher.quantizer.codebook
            d_ref = float(((flat0 - cb[teacher.quantizer.nearest(flat0)]) ** 2).sum(1).mean()) + 1e-8
    params = list(student.encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, round(0.05 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps))
    student.encoder.train()
    t0 = time.time()
    with MetricsLog(out, prefix="distill/") as log:
        for step in (bar := tqdm(range(steps), desc="distill", disable=not progress)):
            for _ in range(clips_per_step):
                buffer.add(next(mixture)[1])
            x = _inputs(teacher, buffer.sample(batch_size))
            with torch.no_grad():
                zt = rearrange(teacher.encoder(x), "n c h w -> (n h w) c")
            zs = rearrange(student.encoder(x), "n c h w -> (n h w) c")
            mse = F.mse_loss(zs, zt) / z_var
            loss, row = mse, {"step": step + 1, "mse_rel": mse.item()}
            if vq:
                target = teacher.quantizer.nearest(zt)
                logits = -((zs * zs).sum(1, keepdim=True) - 2 * zs @ cb.t() + (cb * cb).sum(1)) / d_ref
                ce = F.cross_entropy(logits, target)
                loss = loss + ce_weight * ce
                row |= {"ce": ce.item(), "agreement": float((logits.argmax(1) == target).float().mean())}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            row["loss"] = loss.item()
            log.log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", agree=f"{row.get('agreement', float('nan')):.2f}")
            if (step + 1) % log_every == 0 or step + 1 == steps:
                tqdm.write(f"step {step + 1:>6} | loss {row['loss']:.4f} | latent mse (relative) {row['mse_rel']:.4f}"
                           + (f" | batch agreement {row['agreement']:.3f}" if vq else ""))
    student.eval()
    held = evaluate(teacher, student, test_buffer.frames[: test_buffer.size])
    frame = _inputs(teacher, test_buffer.frames[:1])
    with torch.no_grad():
        ms = {"teacher_encoder_ms": _median_ms(teacher.encoder, frame),
              "student_encoder_ms": _median_ms(student.encoder, frame)}
    ckpt = out / "checkpoint"
    results = {"checkpoint": str(ckpt.resolve()), "steps": steps, "channels": channels, "held_out": held,
               "train_seconds": round(time.time() - t0, 1),
               "teacher_encoder_params": sum(p.numel() for p in teacher.encoder.parameters()),
               "student_encoder_params": sum(p.numel() for p in params),
               "eager_ms_one_frame": ms, "threads": torch.get_num_threads(), **(extra or {})}
    save_tokenizer(ckpt, student, {"distilled_from": (extra or {}).get("teacher"), "steps": steps,
                                   "held_out_token_agreement": held["token_agreement"]})
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
