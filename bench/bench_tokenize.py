"""Tokenization throughput, decode workers, and bytes per token on disk.

1. One process with 2 threads against 2 torchrun ranks with 1 thread each (and, for context, one process
   with 1 thread), decoding in each process (workers=0) so the thread counts are what they say.
2. Decode workers 0 / 1 / 2: DataLoader processes decoding the videos while the main process (1 thread)
   encodes; the peer is decoding in the main process (workers=0). For context, 2 workers with one shard:
   `tokenize_sources` starts a DataLoader per shard, so with 16 shards its workers start 16 times.
3. Bytes per token on disk of the token shards written in 1, against their raw size (the shards' dtype)
   and the tokens' unigram entropy (what an order-0 coder could reach).

    python bench/bench_tokenize.py [--items 200] [--frames 32] [--resolution 32] [--out results/bench/bench_tokenize.json]

The same generated videos, the same tiny (untrained) tokenizer and the same shards per source everywhere;
prints clips/s and the ratios against the named peer, checks every store holds the same tokens, and writes
a result record with the load average (other jobs share these cores: read the ratios with it). An untrained
tokenizer on moving squares gives few distinct tokens: the bytes per token of a trained one are higher.
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

import numpy as np
import torch

from pretrain.data import VideoSource, generate_videos
from pretrain.shards import TokenShards, load_tokenizer, save_tokenizer, tokenize_sources
from toto_robot.results import run_context, write_record
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

CLIP, STRIDE, SHARDS = 8, 2, 16


def tokenize(tmp: Path, out: Path, resolution: int, workers: int = 0, shards: int = SHARDS) -> float:
    """Tokenize tmp/videos into `out` (under torchrun: this rank's shards); returns the seconds it took."""
    src = VideoSource("videos", tmp / "videos", size=resolution, clip_frames=CLIP, stride=STRIDE)
    src.items()  # listing is not timed
    tok = load_tokenizer(tmp / "tokenizer")
    t0 = time.perf_counter()
    tokenize_sources([src], tok, out, tokenizer_path=str(tmp / "tokenizer"), progress=False,
                     shards_per_source=shards, workers=workers)
    return time.perf_counter() - t0


def all_tokens(path: Path) -> np.ndarray:
    shards = TokenShards(path, held_out=0)
    return shards.clips("videos", np.arange(shards.n_clips("videos")))


def file_bytes(path: Path, chunks_only: bool = False) -> int:
    """Bytes of the files under `path`; `chunks_only`: the arrays' chunks (not metadata, progress or index)."""
    return sum(p.stat().st_size for p in path.rglob("*")
               if p.is_file() and (not chunks_only or "c" in p.relative_to(path).parts[:-1]))


def bytes_per_token(path: Path) -> dict:
    shards = TokenShards(path, held_out=0)
    tokens = all_tokens(path)
    counts = np.bincount(tokens.ravel())
    p = counts[counts > 0] / tokens.size
    return {"tokens": int(tokens.size), "dtype": str(shards.parts["videos"][0].dtype),
            "raw_bytes_per_token": shards.parts["videos"][0].dtype.itemsize,
            "chunk_bytes_per_token": file_bytes(path / "videos", chunks_only=True) / tokens.size,
            "store_bytes_per_token": file_bytes(path) / tokens.size,
            "unigram_entropy_bytes_per_token": float(-(p * np.log2(p)).sum() / 8),
            "distinct_tokens": int((counts > 0).sum()), "vocab_size": int(shards.attrs["vocab_size"]),
            "chunk_files": sum(1 for q in (path / "videos").rglob("*")
                               if q.is_file() and "c" in q.relative_to(path / "videos").parts[:-1])}


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
    print(f"tokenize {args.items} items at {args.resolution} px, {SHARDS} shards "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")

    # 1. threads in one process against ranks
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
    reference = all_tokens(tmp / "one.zarr")
    clips = len(reference)
    same = bool(np.array_equal(reference, all_tokens(tmp / "two.zarr")))
    one, two = clips / one_s, clips / two_s
    print(f"1. {clips} clips, threads against ranks")
    print(f"  1 process, 2 threads:      {one:8.1f} clips/s")
    print(f"  1 process, 1 thread:       {clips / single_s:8.1f} clips/s  (context)")
    print(f"  2 ranks, 1 thread each:    {two:8.1f} clips/s  (slowest rank; torchrun launch included: "
          f"{clips / launch_s:.1f} clips/s)")
    print(f"  ratio 2 ranks / 1 process: {two / one:8.2f}x   same tokens: {same}")

    # 2. decode workers, the main process encoding on one thread
    torch.set_num_threads(1)
    workers, workers_same = {}, {}
    for label, n, shards in (("0", 0, SHARDS), ("1", 1, SHARDS), ("2", 2, SHARDS), ("2_one_shard", 2, 1)):
        path = tmp / f"workers{label}.zarr"
        workers[label] = clips / tokenize(tmp, path, args.resolution, workers=n, shards=shards)
        workers_same[label] = bool(np.array_equal(reference, all_tokens(path)))
    print(f"2. decode workers (main process on 1 thread, {SHARDS} shards)")
    for label in ("0", "1", "2"):
        print(f"  {label} workers:                 {workers[label]:8.1f} clips/s   ratio / 0 workers: "
              f"{workers[label] / workers['0']:5.2f}x   same tokens: {workers_same[label]}")
    print(f"  2 workers, 1 shard:        {workers['2_one_shard']:8.1f} clips/s  (context: workers started once; "
          f"ratio / 0 workers {workers['2_one_shard'] / workers['0']:.2f}x)   same tokens: "
          f"{workers_same['2_one_shard']}")

    # 3. bytes per token on disk
    disk = bytes_per_token(tmp / "one.zarr")
    print(f"3. bytes per token on disk ({disk['tokens']:,} tokens, {disk['dtype']}, {SHARDS} shards, "
          f"{disk['chunk_files']} chunk files, {disk['distinct_tokens']} of {disk['vocab_size']} codes used)")
    print(f"  chunks:                    {disk['chunk_bytes_per_token']:8.3f} bytes/token   "
          f"ratio / raw {disk['raw_bytes_per_token']} bytes: {disk['chunk_bytes_per_token'] / disk['raw_bytes_per_token']:.3f}")
    print(f"  whole store (+ metadata):  {disk['store_bytes_per_token']:8.3f} bytes/token")
    print(f"  unigram entropy:           {disk['unigram_entropy_bytes_per_token']:8.3f} bytes/token  (context)")

    record = {"items": args.items, "clips": clips, "resolution": args.resolution, "clip_frames": CLIP,
              "frame_stride": STRIDE, "shards_per_source": SHARDS,
              "clips_per_s_1proc_2threads": one, "clips_per_s_2ranks_1thread": two,
              "clips_per_s_1proc_1thread": clips / single_s,
              "clips_per_s_2ranks_with_launch": clips / launch_s, "ratio_2ranks_over_1proc": two / one,
              "same_tokens": same,
              "decode_workers": {"main_threads": 1, "clips_per_s": workers,
                                 "ratio_over_0_workers": {k: v / workers["0"] for k, v in workers.items()},
                                 "same_tokens": workers_same},
              "bytes_per_token_on_disk": disk}
    print(f"record: {write_record(args.out, record, context)}")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
