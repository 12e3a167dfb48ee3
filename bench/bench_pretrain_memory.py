"""The pretraining trainer on token shards 10x larger than `in_memory_bytes`, against shards that fit in memory:
tokens/s and resident memory (peak RSS) of the real trainer (`pretrain.trainer.pretrain`).

    python bench/bench_pretrain_memory.py [--videos 64] [--frames 128] [--factor 10] [--steps 12] [--batch 4]
                                          [--repeats 2] [--out results/bench/bench_pretrain_memory.json]

Generated videos in `factor` folders of `--videos` each; the small shard set is the first folder, the large one
all of them (`factor` times the tokens). `in_memory_bytes` is the small set's raw size, so the small set is
loaded into memory and the large one is read from zarr on demand. Each run is a fresh process, so its peak RSS
(VmHWM) is its own:

- fits in memory (the peer): small set, loaded;
- 10x, read on demand: large set, clips drawn from the whole source (each clip read decodes its chunk);
- 10x, read on demand, shuffle_window 4: large set, chunk-level shuffling (`Batches`, 4 chunks cached);
- 10x, loaded (context): large set with in_memory_bytes above its size, to show what the peak would grow by.

The configurations run round robin `--repeats` times; the medians are compared, and the spread of the peer's
runs is the run-to-run noise to read the differences against (the machine's load moves tokens/s a lot).

The tokenizer is a narrowed tiny preset (8 channels, 64 codes) with one 2x downsampling stage, so 32 px frames
give 16x16 tokens and a minute of generating and encoding video gives tens of MB of tokens (the defaults: 4 and
40 MiB); the model is the tiny preset. Peak RSS includes torch and the model, the same in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from pretrain import trainer
from pretrain.data import VideoSource, generate_videos
from pretrain.shards import TokenShards, save_tokenizer, tokenize_sources
from toto_robot.results import run_context, write_record
from toto_robot.threads import configure_threads
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

RESOLUTION, CLIP, STRIDE = 32, 4, 1  # 16x16 tokens a frame, 1024 a clip
LOADED_LIMIT = 1 << 30  # TokenShards' default in_memory_bytes
RUNS = (  # label, shard set, in_memory_bytes (None: the small set's size), shuffle_window
    ("fits in memory", "small", None, 0),
    ("{factor}x, read on demand", "large", None, 0),
    ("{factor}x, read on demand, shuffle_window 4", "large", None, 4),
    ("{factor}x, loaded (context)", "large", LOADED_LIMIT, 0),
)


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/self/status: expected a {field} line, found none")


def train_run(spec: dict) -> dict:
    """One trainer run in this (fresh) process: tokens/s, RSS before, peak RSS, whether the shards were loaded."""
    opened: list[TokenShards] = []

    def open_shards(path, **kw):  # records what the trainer opened, to check what it loaded
        shards = TokenShards(path, **kw)
        opened.append(shards)
        return shards

    cfg = trainer.TrainConfig(steps=spec["steps"], batch_size=spec["batch"], warmup_steps=1,
                              log_every=spec["steps"] // 2, eval_every=10**9, ckpt_every=10**9, eval_clips=1,
                              shuffle_window=spec["shuffle_window"], in_memory_bytes=spec["in_memory_bytes"], peak_tflops=1.0,  # MFU not reported
                              progress=False, tensorboard=False)
    rss_before = status_kb("VmRSS")
    with mock.patch.object(trainer, "TokenShards", open_shards):
        res = trainer.pretrain(spec["shards"], {"preset": "tiny"}, cfg, spec["out_dir"])
    loaded = all(isinstance(p, np.ndarray) for parts in opened[0].parts.values() for p in parts)
    return {"tokens_per_s": res["tokens_per_s"], "rss_before_mb": rss_before / 1024,
            "peak_rss_mb": status_kb("VmHWM") / 1024, "peak_growth_mb": (status_kb("VmHWM") - rss_before) / 1024,
            "loaded": loaded, "final_loss": res["final_loss"]}


def shard_bytes(path: Path) -> int:
    """Raw (in-memory) bytes of a shard set's tokens: what TokenShards compares with in_memory_bytes."""
    shards = TokenShards(path, held_out=0, in_memory_bytes=0)  # sizes only: load nothing
    return sum(int(n) * int(np.prod(a.shape[1:])) * a.dtype.itemsize for name in shards.names
               for a, n in zip(shards.parts[name], np.diff(shards.offsets[name])))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=64, help="videos of the small shard set")
    ap.add_argument("--frames", type=int, default=128, help="frames per video")
    ap.add_argument("--factor", type=int, default=10, help="the large set has `factor` times the videos")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration (medians reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("results/bench/bench_pretrain_memory.json"))
    ap.add_argument("--run-of", type=Path, default=None, help=argparse.SUPPRESS)  # one trainer run, in a child
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    if args.run_of is not None:
        spec = json.loads(args.run_of.read_text())
        args.run_of.with_suffix(".result.json").write_text(json.dumps(train_run(spec)))
        return
    context = run_context()
    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_memory-"))
    t0 = time.perf_counter()
    for k in range(args.factor):
        generate_videos(tmp / "videos" / f"part{k:02d}", n_videos=args.videos, frames=args.frames, size=RESOLUTION,
                        seed=k)
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_preset("tiny", image_size=RESOLUTION, channel_mult=(1,), channels=8, embed_dim=8,
                                     codebook_size=64)).eval()
    save_tokenizer(tmp / "tokenizer", tok)
    stores = {"small": tmp / "small.zarr", "large": tmp / "large.zarr"}
    for name, root in (("small", tmp / "videos" / "part00"), ("large", tmp / "videos")):
        src = VideoSource("videos", root, size=RESOLUTION, clip_frames=CLIP, stride=STRIDE)
        tokenize_sources([src], tok, stores[name], tokenizer_path=str(tmp / "tokenizer"), progress=False, workers=0)
    raw = {name: shard_bytes(path) for name, path in stores.items()}
    limit = raw["small"]
    print(f"shard sets: small {raw['small'] / 2**20:.1f} MiB, large {raw['large'] / 2**20:.1f} MiB of tokens "
          f"({raw['large'] / limit:.1f}x in_memory_bytes = {limit / 2**20:.1f} MiB); written in "
          f"{time.perf_counter() - t0:.0f} s")

    labels = [label.format(factor=args.factor) for label, *_ in RUNS]
    trials: dict[str, list[dict]] = {label: [] for label in labels}
    for rep in range(args.repeats):  # round robin, so a change of the machine's load hits every configuration
        for label, (_, store, in_memory, window) in zip(labels, RUNS):
            n = sum(len(t) for t in trials.values())
            spec = {"shards": str(stores[store]), "in_memory_bytes": in_memory or limit, "shuffle_window": window,
                    "steps": args.steps, "batch": args.batch, "out_dir": str(tmp / f"run{n}")}
            spec_path = tmp / f"run{n}.json"
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.run([sys.executable, __file__, "--run-of", str(spec_path), "--threads", str(threads)],
                                  check=False, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"trainer run {label!r} failed:\n{proc.stderr[-4000:]}")
            trials[label].append(json.loads(spec_path.with_suffix(".result.json").read_text()))
            t = trials[label][-1]
            if t["loaded"] != (raw[store] <= spec["in_memory_bytes"]):  # the trainer opened them some other way
                raise RuntimeError(f"trainer run {label!r}: expected the shards {'' if not t['loaded'] else 'not '}"
                                   f"to be read on demand, found them {'loaded' if t['loaded'] else 'not loaded'}")
            print(f"  {rep + 1}/{args.repeats} {label:<38} {t['tokens_per_s']:9,.0f} tokens/s   peak RSS "
                  f"{t['peak_rss_mb']:7.1f} MB (+{t['peak_growth_mb']:6.1f} MB over {t['rss_before_mb']:.1f} MB "
                  f"before training)   loaded: {t['loaded']}", flush=True)
    runs = {}
    for label, (_, store, in_memory, window) in zip(labels, RUNS):
        ts = trials[label]
        runs[label] = {"shard_set": store, "shard_mib": raw[store] / 2**20, "in_memory_bytes": in_memory or limit,
                       "shuffle_window": window, "loaded": all(t["loaded"] for t in ts),
                       **{f"{key}_median": float(np.median([t[key] for t in ts]))
                          for key in ("tokens_per_s", "peak_rss_mb", "peak_growth_mb")},
                       "trials": ts}
    peer = runs[labels[0]]
    print(f"medians of {args.repeats} against `{labels[0]}` (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores, {threads} thread{'s' if threads > 1 else ''}):")
    spread = {key: float(np.ptp([t[key] for t in trials[labels[0]]])) for key in ("tokens_per_s", "peak_rss_mb")}
    print(f"  {labels[0]:<42} {peer['tokens_per_s_median']:9,.0f} tokens/s   peak RSS "
          f"{peer['peak_rss_mb_median']:7.1f} MB   (its runs differ by {spread['tokens_per_s']:,.0f} tokens/s, "
          f"{spread['peak_rss_mb']:.1f} MB)")
    ratios = {}
    for label in labels[1:]:
        r = runs[label]
        ratios[label] = {"tokens_per_s": r["tokens_per_s_median"] / peer["tokens_per_s_median"],
                         "peak_rss": r["peak_rss_mb_median"] / peer["peak_rss_mb_median"],
                         "peak_rss_mb_difference": r["peak_rss_mb_median"] - peer["peak_rss_mb_median"]}
        print(f"  {label:<42} {r['tokens_per_s_median']:9,.0f} tokens/s ({ratios[label]['tokens_per_s']:4.2f}x)   "
              f"peak RSS {r['peak_rss_mb_median']:7.1f} MB ({ratios[label]['peak_rss']:5.3f}x, "
              f"{ratios[label]['peak_rss_mb_difference']:+.1f} MB)")
    record = {"videos_small": args.videos, "factor": args.factor, "frames_per_video": args.frames,
              "resolution": RESOLUTION, "clip_frames": CLIP, "frame_stride": STRIDE,
              "tokens_per_clip": CLIP * (RESOLUTION // tok.cfg.downsample) ** 2, "model": "tiny",
              "steps": args.steps, "batch": args.batch, "shard_raw_bytes": raw, "in_memory_bytes": limit,
              "repeats": args.repeats,
              "runs": runs, "ratios_over_fits_in_memory": ratios, "spread_fits_in_memory": spread}
    print(f"record: {write_record(args.out, record, context)}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
