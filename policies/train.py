"""The behavior-cloning trainer shared by every backbone and head: windows from a store (or its feature
cache, loaded into RAM or, when too large, read from its store as training goes), AdamW with cosine decay, TensorBoard +
console logging, periodic rollout evaluation, and the best checkpoint kept by success rate (validation loss
breaks ties)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from policies.bc import BCPolicy
from policies.features import feature_chunk_steps, feature_key, feature_store
from toto_robot.sampler import WindowDataset, split_episodes
from toto_robot.schedules import warmup_cosine
from toto_robot.store import TrajectoryStore


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    val_ratio: float = 0.1
    eval_every: int = 1000  # rollout evaluation (and best-checkpoint choice) every this many steps
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 <= self.val_ratio < 1:
            raise ValueError(f"TrainConfig.val_ratio: expected in [0, 1), got {self.val_ratio}")


FEATURE_MEMORY_BYTES = 4 << 30  # a feature cache up to this size is loaded into RAM; a larger one streams


def datasets(policy: BCPolicy, store_path: str | Path, val_ratio: float, seed: int, progress: bool = True,
             memory_bytes: int = FEATURE_MEMORY_BYTES) -> tuple[WindowDataset, WindowDataset | None]:
    """Training and validation windows: observation keys 1 step, `action` a chunk (padded at the end).
    Toto backbones read the feature cache (computed on first use): loaded into RAM when its features fit
    `memory_bytes`, else read from the store window by window (its chunks hold a few steps each); the CNN
    reads the images."""
    cfg = policy.cfg
    store = TrajectoryStore.open(store_path)
    missing = [k for k in cfg.obs_keys if k not in store.keys]
    if missing:
        raise ValueError(f"store {store_path}: expected the policy's observation keys {list(cfg.obs_keys)}, "
                         f"missing {missing} (it has {list(store.keys)})")
    if policy.encoder is not None:
        source = feature_store(store_path, policy.encoder, cfg.cameras, cfg.encoder_window, progress=progress,
                               views=cfg.augment_views, shift=cfg.shift_augment if cfg.augment_views > 1 else 0,
                               dtype=cfg.cache_dtype, layers=cfg.encoder_layers)
        obs_keys = [feature_key(c) for c in cfg.cameras]
        cache = TrajectoryStore.open(source)
        size = sum(cache.n_steps * math.prod(cache.schema[k][0]) * np.dtype(cache.schema[k][1]).itemsize
                   for k in obs_keys)
        streamed = size > memory_bytes
        if streamed and any(cache.array(k).chunks[0] > feature_chunk_steps(*cache.schema[k]) for k in obs_keys):
            warnings.warn(f"feature cache {source} was written with long chunks (each window's read decodes "
                          "tens of MiB): delete it to recompute it with short chunks")
    else:
        source, obs_keys, streamed = store_path, list(cfg.cameras), False
    # n_obs_steps observations, the action chunk starting at the oldest of them (diffusion_policy's windows)
    horizons = {k: cfg.n_obs_steps for k in (*obs_keys, *cfg.low_dim_keys)} | {"action": cfg.chunk}
    if val_ratio > 0 and store.n_episodes >= 2:
        train_ids, val_ids = split_episodes(store.n_episodes, val_ratio, seed)
    else:
        train_ids, val_ids = np.arange(store.n_episodes), np.arange(0)
    in_memory = [k for k in horizons if k not in obs_keys] if streamed else "all"
    make = lambda ids: WindowDataset(source, horizons, pad_before=cfg.n_obs_steps - 1, pad_after=cfg.chunk - 1,
                                     episodes=ids, in_memory=in_memory)
    return make(train_ids), (make(val_ids) if len(val_ids) else None)


def _loader(ds, batch_size, shuffle, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=shuffle, drop_last=shuffle,
                                       generator=gen)


@torch.no_grad()
def validation_loss(policy: BCPolicy, ds) -> float | None:
    if ds is None:
        return None
    policy.eval()
    losses = [policy(b)[0].item() * len(b["action"]) for b in _loader(ds, 256, False, 0)]
    policy.train()
    return float(sum(losses) / len(ds))


def train_bc(policy: BCPolicy, store_path: str | Path, cfg: TrainConfig, out_dir: str | Path,
             evaluate: Callable[[BCPolicy, int], dict] | None = None, progress: bool = True) -> dict:
    """Train `policy` on the store; `evaluate(policy, step) -> {"success_rate": ...}` runs rollouts.
    Writes out_dir/{best,last} checkpoints, out_dir/tb (TensorBoard) and out_dir/history.json.

    Raises ValueError before writing anything if the store holds NaN or infinity (naming the key and
    episode), and stops with one if the loss stops being finite."""
    out = Path(out_dir)
    torch.manual_seed(cfg.seed)
    store = TrajectoryStore.open(store_path)
    try:
        stats = store.stats
    except (KeyError, ValueError):  # missing or older than the episodes: compute and save them
        stats = None
    if stats is None or not all(np.isfinite(v).all() for d in stats.values() for v in d.values()):
        # compute_stats reads every step of every key and names any non-finite value's key and episode
        # (saved statistics holding NaN come from a store written before that check)
        stats = TrajectoryStore.open(store_path, mode="a").compute_stats()
    policy.set_stats(stats)
    train_ds, val_ds = datasets(policy, store_path, cfg.val_ratio, cfg.seed, progress)
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.warmup, cfg.steps))
    writer = SummaryWriter(str(out / "tb"))
    history: dict = {"train": [], "val": [], "eval": []}
    best, best_step = (-1.0, math.inf), None
    loader = _loader(train_ds, cfg.batch_size, True, cfg.seed)
    it = iter(loader)
    policy.train()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"bc {policy.cfg.backbone}/{policy.cfg.head}", disable=not progress)
    for step in bar:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        loss, metrics = policy(batch)
        if not torch.isfinite(loss):  # before the step: the weights stay finite, nothing NaN is saved
            bad = [k for k, v in batch.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            raise ValueError(f"bc training on {store_path}: the loss is {loss.item()} at step {step}; "
                             + (f"non-finite inputs in {bad}" if bad else "the inputs are finite: lower the "
                                "learning rate"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            history["train"].append({"step": step, **metrics})
            writer.add_scalar("train/loss", metrics["loss"], step)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = validation_loss(policy, val_ds)
            record = {"step": step, "val_loss": val}
            if val is not None:
                writer.add_scalar("val/loss", val, step)
            if evaluate is not None:
                policy.eval()
                record.update(evaluate(policy, step))
                policy.train()
                writer.add_scalar("eval/success_rate", record["success_rate"], step)
            history["eval"].append(record)
            score = (record.get("success_rate", 0.0), val if val is not None else metrics["loss"])
            if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
                best, best_step = score, step
                policy.save(out / "best", extra={"step": step, "record": record, "store": str(store_path)})
            tqdm.write(f"[bc] step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                          if isinstance(v, float)))
    policy.save(out / "last", extra={"step": cfg.steps, "store": str(store_path)})
    writer.close()
    policy.eval()
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return {"history": history, "best_success_rate": best[0], "best_step": best_step, "best": str(out / "best"),
            "last": str(out / "last")}
