"""Tokenization throughput: one process with 2 threads against 2 torchrun ranks with 1 thread each
(and, for context, one process with 1 thread).

    python bench/bench_tokenize.py [--items 200] [--frames 32] [--resolution 32] [--out results/bench/bench_tokenize.json]

The same generated videos, the same tiny (untrained) tokenizer, the same shards per source, decoding in
each process (workers=0) so the thread counts are what they say; prints clips/s of both, their ratio
(2 ranks / 1 process), checks the two stores hold the same tokens, and writes a result record with the
load average (other jobs share these cores: read the ratio with it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pretrain.data import VideoSource, generate_videos
from pretrain.shards import TokenShards, load_tokenizer, save_tokenizer, tokenize_sources
from toto_robot.results import run_context, write_record
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

CLIP, STRIDE, SHARDS = 8, 2, 16


def tokenize(tmp: Path, out: Path, resolution: int) -> float:
    """Tokenize tmp/videos into `out` (under torchrun: this rank's shards); returns the seconds it took."""
    src = VideoSource("videos", tmp / "videos", size=resolution, clip_frames=CLIP, stride=STRIDE)
    src.items()  # listing is not timed
    tok = load_tokenizer(tmp / "tokenizer")
    t0 = time.perf_counter()
    tokenize_sources([src], tok, out, tokenizer_path=str(tmp / "tokenizer"), progress=False,
                     shards_per_source=SHARDS, workers=0)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("results/bench/bench_tokenize.json"))
    ap.add_argument("--rank-of", type=Path, default=None, help=argparse.SUPPRESS)  # a torchrun rank of this script
    args = ap.parse_args()
    if args.rank_of is not None:
        torch.set_num_threads(1)
        torch.distributed.init_process_group("gloo")
        seconds = tokenize(args.rank_of, args.rank_of / "two.zarr", args.resolution)
        (args.rank_of / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps({"seconds": seconds}))
        return
    context = run_context()
    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize-"))
    generate_videos(tmp / "videos", n_videos=args.items, frames=args.frames, size=48)
    torch.manual_seed(0)
    save_tokenizer(tmp / "tokenizer", Tokenizer(tokenizer_preset("tiny", image_size=args.resolution)).eval())

    torch.set_num_threads(1)
    single_s = tokenize(tmp, tmp / "single.zarr", args.resolution)  # context: the same process on one thread
    torch.set_num_threads(2)
    one_s = tokenize(tmp, tmp / "one.zarr", args.resolution)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    t0 = time.perf_counter()
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", __file__, "--rank-of", str(tmp),
                    "--resolution", str(args.resolution)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   capture_output=True)
    launch_s = time.perf_counter() - t0
    two_s = max(json.loads((tmp / f"rank{r}.json").read_text())["seconds"] for r in range(2))

    a, b = TokenShards(tmp / "one.zarr", held_out=0), TokenShards(tmp / "two.zarr", held_out=0)
    clips = a.n_clips("videos")
    same = clips == b.n_clips("videos") and np.array_equal(a.clips("videos", np.arange(clips)),
                                                           b.clips("videos", np.arange(clips)))
    one, two = clips / one_s, clips / two_s
    print(f"tokenize {args.items} items, {clips} clips at {args.resolution} px, {SHARDS} shards "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  1 process, 2 threads:      {one:8.1f} clips/s")
    print(f"  1 process, 1 thread:       {clips / single_s:8.1f} clips/s  (context)")
    print(f"  2 ranks, 1 thread each:    {two:8.1f} clips/s  (slowest rank; torchrun launch included: "
          f"{clips / launch_s:.1f} clips/s)")
    print(f"  ratio 2 ranks / 1 process: {two / one:8.2f}x   same tokens: {same}")
    record = {"items": args.items, "clips": clips, "resolution": args.resolution, "shards_per_source": SHARDS,
              "clips_per_s_1proc_2threads": one, "clips_per_s_2ranks_1thread": two,
              "clips_per_s_1proc_1thread": clips / single_s,
              "clips_per_s_2ranks_with_launch": clips / launch_s, "ratio_2ranks_over_1proc": two / one,
              "same_tokens": same}
    print(f"record: {write_record(args.out, record, context)}")


if __name__ == "__main__":
    main()
