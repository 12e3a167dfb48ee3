"""Next-token pretraining over token shards, from one CPU process to many GPUs under torchrun.

- AdamW (beta2 0.95; weight decay on matrices only), linear warmup then cosine decay to
  `min_lr_ratio * lr`, gradient clipping, gradient accumulation, bf16 autocast on CUDA, optional
  `torch.compile`, DDP or FSDP2 through `toto_robot.parallel.parallelize`.
- Batches are a pure function of (seed, step, micro-batch, rank), also with chunk-level shuffling for
  shards larger than memory (`shuffle_window`): the data position is the step, so a
  checkpoint holding model, optimizer, scheduler, RNG and step resumes exactly where the run stopped.
- The checkpoint is a Toto checkpoint directory (config.json + tokenizer/model safetensors, loadable by
  `load_toto`; `corpus` names the shards' sources, for the BC and probe records) carrying the train
  state (`toto_robot.checkpoint.TrainState`: step, optimizer, scheduler, RNG, data position); written
  atomically every `ckpt_every` steps.
- Logs loss, lr, gradient norm, tokens/s and MFU to the console, a tqdm bar, TensorBoard and
  `metrics.jsonl`; held-out loss every `eval_every` steps and at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm.auto import tqdm

from pretrain import urls
from pretrain.shards import TokenShards
from toto_robot.checkpoint import (
    CONFIG_FILE,
    TOTO,
    TrainState,
    clean_leftovers,
    load_state_dict,
    load_tokenizer,
    load_train_state,
    read_checkpoint,
    save_train_state,
)
from toto_robot.config import model_config
from toto_robot.metrics_log import MetricsLog
from toto_robot.model import ModelConfig, Transformer, clip_to_sequence
from toto_robot.parallel import STRATEGIES, autocast, init_distributed, parallelize
from toto_robot.schedules import warmup_cosine
from toto_robot.tokenizer import TokenizerConfig
from toto_robot.typecheck import check_types

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8  # sequences per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0
    strategy: str = "none"  # none | ddp | fsdp
    compile: bool = False
    bf16: bool = True  # autocast to bfloat16 on CUDA (no effect on CPU)
    held_out: float = 0.1  # fraction of each source's items (whole videos) kept for the held-out loss
    shuffle_window: int = 0  # 0: clips drawn from the whole source; W: from windows of W storage chunks (Batches)
    in_memory_bytes: int = 1 << 30  # a source's shards up to this size are loaded, larger ones read on demand
    eval_every: int = 100
    eval_clips: int = 32  # held-out clips per source per evaluation
    log_every: int = 10
    ckpt_every: int = 100
    resume: bool = True  # continue from out_dir/checkpoint when it exists
    peak_tflops: float | None = None  # per device, for MFU; None: measure a matmul at start
    init_from: str | None = None  # a Toto checkpoint to start from (e.g. the 128 px model for 256 px)
    rope_base: float | None = None  # a new RoPE base (the paper's 256 px fine-tune uses 50,000)
    weights: dict[str, float] = field(default_factory=dict)  # source -> mixture weight; empty: equal
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        check_types(self)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "log_every", "ckpt_every", "eval_clips"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"TrainConfig.strategy: expected one of {STRATEGIES}, got {self.strategy!r}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.lr / min_lr_ratio: expected lr > 0 and ratio in [0, 1], "
                             f"got {self.lr} / {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.warmup_steps / grad_clip / weight_decay: expected >= 0, got "
                             f"{self.warmup_steps} / {self.grad_clip} / {self.weight_decay}")
        if any(not w > 0 for w in self.weights.values()):
            raise ValueError(f"TrainConfig.weights: expected positive weights, got {self.weights}")


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (linear and embedding weights) only, none on norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


class Batches:
    """Mixture batches from token shards. Batch (step, micro, rank) draws sources by weight, then clips, from a
    generator seeded by exactly those numbers: no hidden state to checkpoint.

    `window_chunks` = 0: clips uniformly from the whole source (a clip read from zarr reads its whole storage
    chunk, `CHUNK_CLIPS` clips). `window_chunks` = W > 0: chunk-level shuffling for shards larger than memory.
    Each source's storage chunks are visited in a seeded random order, epoch after epoch; a rank draws its
    clips uniformly from a window of W chunks that moves on when the window's clips have been drawn about
    once, and the next rank takes the next window, so ranks read different data. The window is a function
    of (seed, step, rank) too, its chunks are read once and cached: memory stays at W chunks per source
    whatever the shards' size, and every chunk read is used."""

    def __init__(self, shards: TokenShards, weights: dict[str, float], cfg: ModelConfig, seed: int,
                 window_chunks: int = 0, world: int = 1, samples_per_step: int = 1):
        weights = dict(weights) or {n: 1.0 for n in shards.names}
        unknown = sorted(set(weights) - set(shards.names))
        missing = sorted(set(shards.names) - set(weights))
        if unknown or missing:
            raise ValueError(f"mixture weights: expected one per shard source {shards.names}, "
                             f"got unknown {unknown}, missing {missing}")
        if window_chunks < 0:
            raise ValueError(f"shuffle_window: expected 0 (off) or a number of chunks, got {window_chunks}")
        self.names = [n for n in shards.names if shards.n_clips(n) > 0]
        if not self.names:
            raise ValueError(f"token shards {shards.path}: expected training clips, found none")
        w = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.probs = w / w.sum()
        self.shards, self.cfg, self.seed = shards, cfg, seed
        self.window_chunks, self.world = window_chunks, world
        self.chunk_reads = 0  # storage chunks read by windows (for the benchmark and the tests)
        self._windows: dict[str, tuple] = {}  # name -> (window key, chunks, clip numbers, {chunk: rows})
        self._bounds = {n: shards.chunk_bounds(n) for n in self.names} if window_chunks else {}
        self._steps_per_window = {}
        for n, p in zip(self.names, self.probs):
            if window_chunks:
                n_chunks = len(self._bounds[n]) - 1
                window_clips = window_chunks * shards.n_clips(n) / n_chunks  # training clips in a window, on average
                self._steps_per_window[n] = max(1, int(window_clips / (samples_per_step * p)))

    def sequences(self, name: str, index: np.ndarray, split: str = "train") -> torch.Tensor:
        ids = torch.from_numpy(self.shards.clips(name, index, split))
        return clip_to_sequence(ids, self.cfg, kind=self.shards.kinds[name])

    def _chunk_order(self, i: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, i, epoch]).permutation(len(self._bounds[self.names[i]]) - 1)

    def window(self, i: int, step: int, rank: int) -> tuple:
        """(key, chunks, training clip numbers, cache) of source i's window at `step` on `rank`."""
        name = self.names[i]
        key = (step // self._steps_per_window[name], rank)
        if name in self._windows and self._windows[name][0] == key:
            return self._windows[name]
        bounds, size = self._bounds[name], self.window_chunks
        n_chunks = len(bounds) - 1
        for extra in range(n_chunks + 1):  # a window of held-out clips only: take the next one
            q = ((key[0] + extra) * self.world + rank) * size + np.arange(size)  # positions in the chunk order
            chunks = np.unique([self._chunk_order(i, int(e))[r] for e, r in zip(q // n_chunks, q % n_chunks)])
            numbers = np.concatenate([self.shards.in_split(name, bounds[c], bounds[c + 1]) for c in chunks])
            if len(numbers):
                break
        self._windows[name] = (key, chunks, numbers, {})  # the previous window's chunks are dropped
        return self._windows[name]

    def draw(self, step: int, micro: int, rank: int, size: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(source index, batch rows, clip numbers) of batch (step, micro, rank)."""
        rng = np.random.default_rng([self.seed, step, micro, rank])
        src = rng.choice(len(self.names), size=size, p=self.probs)
        picks = []
        for s in np.unique(src):
            rows = np.flatnonzero(src == s)
            name = self.names[s]
            if self.window_chunks:
                numbers = self.window(int(s), step, rank)[2]
                picks.append((int(s), rows, numbers[rng.integers(0, len(numbers), size=len(rows))]))
            else:
                index = rng.integers(0, self.shards.n_clips(name), size=len(rows))
                picks.append((int(s), rows, self.shards.clip_numbers(name, index)))
        return picks

    def _read_windowed(self, i: int, step: int, rank: int, numbers: np.ndarray) -> np.ndarray:
        _, _, _, cache = self.window(i, step, rank)
        bounds = self._bounds[self.names[i]]
        chunk = np.searchsorted(bounds, numbers, side="right") - 1
        out = None
        for c in np.unique(chunk):
            if c not in cache:  # one read of the whole chunk, kept while the window lasts
                cache[c] = self.shards.read(self.names[i], np.arange(bounds[c], bounds[c + 1]))
                self.chunk_reads += 1
            sel = np.flatnonzero(chunk == c)
            rows = cache[c][numbers[sel] - bounds[c]]
            out = np.empty((len(numbers), *rows.shape[1:]), rows.dtype) if out is None else out
            out[sel] = rows
        return out

    def cached_bytes(self) -> int:
        return sum(a.nbytes for w in self._windows.values() for a in w[3].values())

    def batch(self, step: int, micro: int, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = torch.empty(size, 1 + self.shards.clip_frames * self.shards.grid**2 + 1, dtype=torch.long)
        for s, rows, numbers in self.draw(step, micro, rank, size):
            name = self.names[s]
            tokens = (self._read_windowed(s, step, rank, numbers) if self.window_chunks
                      else self.shards.read(name, numbers))
            seqs[rows] = clip_to_sequence(torch.from_numpy(tokens.astype(np.int64)), self.cfg, kind=self.shards.kinds[name])
        return seqs[:, :-1], seqs[:, 1:]

    def held_out(self, max_clips: int, size: int):
        """Fixed held-out batches: (source name, x, y) for the first `max_clips` held-out clips of each source."""
        for name in self.shards.names:
            n = min(max_clips, self.shards.n_clips(name, "held_out"))
            for start in range(0, n, size):
                seqs = self.sequences(name, np.arange(start, min(n, start + size)), "held_out")
                yield name, seqs[:, :-1], seqs[:, 1:]


def measure_peak_flops(device: torch.device, n: int = 1024, reps: int = 8) -> float:
    """Achievable matmul FLOP/s on this device (float32 on CPU, bfloat16 on CUDA): the MFU denominator
    when no peak is configured."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _grad_sync(model: torch.nn.Module, strategy: str, enabled: bool):
    """Skip gradient all-reduce on all but the last micro-batch of an accumulation."""
    import contextlib

    if strategy == "ddp" and not enabled:
        return model.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# Full (unsharded) state dicts keyed by parameter name, whatever the wrapping (none, DDP, FSDP2).
_STATE_OPTIONS = {"full_state_dict": True, "cpu_offload": True}


def shards_tokenizer_config(shards: TokenShards) -> TokenizerConfig:
    """The shards' tokenizer at the resolution they were tokenized at (a convolutional tokenizer runs at any)."""
    return replace(shards.tokenizer_config, image_size=int(shards.attrs["resolution"]))


def build_model_config(shards: TokenShards, model_node: dict, cfg: TrainConfig) -> tuple[ModelConfig, dict | None]:
    """The transformer's config: from `model_node` (a preset), or from `init_from`'s architecture; its
    vocabulary, tokens per frame and context always follow the shards."""
    tok = shards_tokenizer_config(shards)
    init = None
    if cfg.init_from:
        init = read_checkpoint(cfg.init_from, TOTO)
        arch = {k: init["model"][k] for k in ("n_layers", "d_model", "n_heads", "ffn_hidden", "norm_eps", "rope_base")}
        if init["model"]["codebook_size"] != tok.vocab_size:
            raise ValueError(f"init_from {cfg.init_from}: expected codebook_size {tok.vocab_size} (the shards' "
                             f"tokenizer), found {init['model']['codebook_size']}")
        model_node = {"preset": "tiny", **arch}
    mcfg = model_config(model_node, tok, shards.clip_frames)
    if cfg.rope_base is not None:
        mcfg = replace(mcfg, rope_base=float(cfg.rope_base))
    return mcfg, init


def pretrain(shards_path: str | Path, model_node: dict, cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Train (or resume) a transformer on the shards; returns the final metrics (also in results.json)."""
    out = Path(out_dir)
    rank, world, device = init_distributed()
    shards = TokenShards(shards_path, held_out=cfg.held_out, in_memory_bytes=cfg.in_memory_bytes)
    mcfg, init = build_model_config(shards, model_node, cfg)
    tok_path = shards.attrs["tokenizer_checkpoint"]
    tokenizer = load_tokenizer(tok_path) if rank == 0 else None  # rank 0 writes it into every checkpoint
    if tokenizer is not None:  # the same convolutions, configured at the shards' resolution (a 256 px fine-tune
        tokenizer.cfg = shards_tokenizer_config(shards)  # of a 128 px tokenizer): its grid is the model's
    batches = Batches(shards, cfg.weights, mcfg, cfg.seed, window_chunks=cfg.shuffle_window, world=world,
                      samples_per_step=cfg.batch_size * cfg.grad_accum)

    torch.manual_seed(cfg.seed)
    model = Transformer(mcfg)
    if init is not None:
        model.load_state_dict(load_state_dict(cfg.init_from, "model"))
    model.to(device)
    flops = model.flops_per_token(mcfg.max_seq_len - 1)
    model_p = parallelize(model, cfg.strategy, compile=cfg.compile)
    opt = build_optimizer(model_p, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))

    start = 0
    ckpt = out / CHECKPOINT
    if rank == 0:
        clean_leftovers(ckpt)  # what a save that was killed left beside the checkpoint
    if world > 1:
        dist.barrier()
    if cfg.resume and (ckpt / CONFIG_FILE).is_file():
        _check_same_model(ckpt, mcfg)
        start = _restore(load_train_state(ckpt), model_p, opt, sched, rank, world)
        if rank == 0:
            print(f"resuming from {ckpt} at step {start}")
    metrics = MetricsLog(out, start_step=start, tensorboard=cfg.tensorboard) if rank == 0 else None

    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops else measure_peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * (mcfg.max_seq_len - 1)

    def evaluate() -> dict:
        model_p.eval()
        sums: dict[str, list[float]] = {}
        with torch.no_grad(), autocast(device, cfg.bf16):
            for name, x, y in batches.held_out(cfg.eval_clips, cfg.batch_size):
                _, loss = model_p(x.to(device), y.to(device))
                s = sums.setdefault(name, [0.0, 0])
                s[0] += loss.item() * y.numel()
                s[1] += y.numel()
        model_p.train()
        per_source = {f"held_out_loss/{k}": v[0] / v[1] for k, v in sums.items()}
        total = sum(v[1] for v in sums.values())
        return {"held_out_loss": sum(v[0] for v in sums.values()) / total if total else None, **per_source}

    run = {"config": asdict(cfg), "shards": urls.resolved(shards.path), "train_flops_per_token": flops["train"]}

    def save(step: int):
        """Collective (every rank gathers its state); rank 0 writes one atomic checkpoint directory."""
        model_sd, optim_sd = get_state_dict(model_p, opt, options=StateDictOptions(**_STATE_OPTIONS))
        rng = [torch.get_rng_state(), *([torch.cuda.get_rng_state()] if torch.cuda.is_available() else [])]
        rngs = [rng]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng)
        if rank == 0:
            scheduler = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
            state = TrainState(step=step, model=model_sd, optimizer=optim_sd, scheduler=scheduler, rng=rngs,
                               seed=cfg.seed, world_size=world, run=run)
            save_train_state(ckpt, state, tokenizer, mcfg, extra={"corpus": "+".join(shards.names)})
        if world > 1:
            dist.barrier()

    model_p.train()
    bar = tqdm(total=cfg.steps, initial=start, desc="pretrain", disable=rank != 0 or not cfg.progress)
    window_t, window_tokens = time.perf_counter(), 0
    last = {}
    for step in range(start, cfg.steps):
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = batches.batch(step, micro, rank, cfg.batch_size)
            with _grad_sync(model_p, cfg.strategy, micro == cfg.grad_accum - 1), autocast(device, cfg.bf16):
                _, loss = model_p(x.to(device), y.to(device))
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        norm = torch.nn.utils.clip_grad_norm_(model_p.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lr = sched.get_last_lr()[0]
        sched.step()
        loss_mean = loss_sum / cfg.grad_accum
        if world > 1:
            dist.all_reduce(loss_mean)
            loss_mean /= world
        window_tokens += tokens_per_step
        row = {"step": step + 1, "loss": loss_mean.item(), "lr": lr, "grad_norm": _local(norm).item()}
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            dt = time.perf_counter() - window_t
            row["tokens_per_s"] = window_tokens / dt
            row["mfu"] = row["tokens_per_s"] * flops["train"] / (peak * world)
            if rank == 0:
                tqdm.write(f"step {done:>6} | loss {row['loss']:.4f} | lr {lr:.2e} | grad norm {row['grad_norm']:.3f}"
                           f" | {row['tokens_per_s']:,.0f} tokens/s | MFU {100 * row['mfu']:.2f}%")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            row.update(evaluate())
            if rank == 0:
                tqdm.write(f"step {done:>6} | held-out loss {row['held_out_loss']:.4f}")
        if metrics is not None:
            metrics.log(row)
        last.update(row)
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            save(done)
        if "tokens_per_s" in row or done % cfg.eval_every == 0 or done % cfg.ckpt_every == 0:
            window_t, window_tokens = time.perf_counter(), 0  # time training only, not eval or saving
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
    bar.close()
    if start >= cfg.steps:  # nothing left to train: report the checkpoint's held-out loss
        last.update(evaluate())
    if metrics is not None:
        metrics.close()
    results = {"steps": cfg.steps, "final_loss": last.get("loss"), "held_out_loss": last.get("held_out_loss"),
               "tokens_per_s": last.get("tokens_per_s"), "mfu": last.get("mfu"), "params": model.num_params(),
               "train_flops_per_token": flops["train"], "tokens_seen": tokens_per_step * cfg.steps,
               "compute_flops": flops["train"] * tokens_per_step * cfg.steps, "world_size": world,
               "checkpoint": str(ckpt.resolve())}
    if rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _check_same_model(ckpt: Path, mcfg: ModelConfig) -> None:
    """Resuming continues the checkpoint's model: refuse, naming both, a run configured with another one."""
    saved = read_checkpoint(ckpt, TOTO)["model"]
    ours = mcfg.to_dict()
    differ = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    if differ:
        raise ValueError(f"checkpoint at {ckpt} was trained with model config "
                         f"{ {k: saved.get(k) for k in differ} }, this run has { {k: ours.get(k) for k in differ} }; "
                         "resume with the same model, or use another out_dir or train.resume=false")


def _restore(state: TrainState, model_p, opt, sched, rank: int, world: int) -> int:
    """Load `state` into the (wrapped) model, optimizer, scheduler and this rank's RNG; returns its step."""
    set_state_dict(model_p, opt, model_state_dict=state.model, optim_state_dict=state.optimizer,
                   options=StateDictOptions(full_state_dict=True))
    sched.load_state_dict({**state.scheduler, "lr_lambdas": [None] * len(opt.param_groups)})
    if state.world_size == world:
        torch.set_rng_state(state.rng[rank][0])
        if torch.cuda.is_available() and len(state.rng[rank]) > 1:
            torch.cuda.set_rng_state(state.rng[rank][1])
    elif rank == 0:
        log.warning("checkpoint at step %d was written by %d processes, resuming with %d: batches differ from an "
                    "uninterrupted run", state.step, state.world_size, world)
    return state.step
