"""Pretraining throughput on this machine.

1. Data pipeline: training tokens per second delivered from token shards (what `toto-pretrain` reads)
   against decoding the videos and tokenizing them on the fly (what training without `toto-tokenize`
   would do), same videos, same tokenizer, same clip sampling.
2. Training: tokens/s and MFU of the real trainer (`pretrain.trainer.pretrain`) on those shards, MFU
   against the matmul throughput measured on this machine.

    python bench/bench_pretrain.py [--videos DIR] [--model small] [--resolution 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.data import Mixture, VideoSource, generate_videos
from pretrain.shards import TokenShards, save_tokenizer, tokenize_sources
from pretrain.trainer import Batches, TrainConfig, measure_peak_flops, pretrain
from toto_robot.config import model_config
from toto_robot.model import clip_to_sequence
from toto_robot.tokenizer import Tokenizer, tokenizer_preset


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=None, help="a folder of videos (default: generated)")
    ap.add_argument("--model", default="small")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--clips", type=int, default=24, help="clips decoded for the on-the-fly measurement")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain-"))
    videos = args.videos or generate_videos(tmp / "videos", n_videos=8, frames=256, size=96)
    tok = Tokenizer(tokenizer_preset("tiny", image_size=args.resolution)).eval()
    save_tokenizer(tmp / "tokenizer", tok)
    src = VideoSource("videos", videos, size=args.resolution)  # 16 frames, one in 4
    mcfg = model_config({"preset": args.model}, tok.cfg, src.clip_frames)
    seq = mcfg.max_seq_len - 1  # training tokens per sequence (inputs)

    # On the fly: decode + resize + tokenize + build sequences.
    mix = Mixture([src], seed=0)
    t0 = time.perf_counter()
    n = 0
    while n < args.clips:
        clips = np.stack([next(mix)[1] for _ in range(min(8, args.clips - n))])
        clip_to_sequence(tok.encode(clips), mcfg)
        n += len(clips)
    fly = n * seq / (time.perf_counter() - t0)

    tokenize_sources([src], tok, tmp / "tokens.zarr", tokenizer_path=str(tmp / "tokenizer"), progress=False)
    shards = TokenShards(tmp / "tokens.zarr", held_out=0.1)
    batches = Batches(shards, {}, mcfg, seed=0)
    t0 = time.perf_counter()
    for step in range(200):
        batches.batch(step, 0, 0, args.batch)
    from_shards = 200 * args.batch * seq / (time.perf_counter() - t0)

    print(f"data pipeline ({args.resolution} px, {seq} tokens per sequence, {torch.get_num_threads()} threads):")
    print(f"  from token shards:           {from_shards:14,.0f} tokens/s")
    print(f"  decoding video on the fly:   {fly:14,.0f} tokens/s")
    print(f"  ratio shards / on the fly:   {from_shards / fly:14,.1f}x")

    peak = measure_peak_flops(torch.device("cpu"), n=1024, reps=16)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=1, log_every=args.steps // 2,
                      eval_every=10**9, ckpt_every=10**9, eval_clips=1, peak_tflops=peak / 1e12, progress=False,
                      tensorboard=False)
    res = pretrain(tmp / "tokens.zarr", {"preset": args.model}, cfg, tmp / "run")
    print(f"training `{args.model}` ({res['params'] / 1e6:.1f}M params), batch {args.batch} x {seq} tokens:")
    print(f"  {res['tokens_per_s']:,.0f} tokens/s, MFU {100 * res['mfu']:.1f}% of the measured "
          f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s ({res['train_flops_per_token'] / 1e6:.1f} MFLOP/token)")
    print(f"  the data pipeline from shards feeds {from_shards / res['tokens_per_s']:,.0f}x what training consumes; "
          f"on the fly {fly / res['tokens_per_s']:,.2f}x")


if __name__ == "__main__":
    main()
