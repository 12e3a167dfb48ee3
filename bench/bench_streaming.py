"""Streaming encoder per-step time with a 16-frame window, against the two peers a control loop could
use instead: recomputing the window from scratch each step, and encoding the single new frame alone.

    python bench/bench_streaming.py [--preset tiny|small] [--window 16] [--steps 24]
Prints median ms per step and the ratios (above 1: streaming is faster)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.model import Transformer, model_preset
from toto_robot.synthetic import moving_squares
from toto_robot.tokenizer import Tokenizer, tokenizer_preset


def median_ms(fn, frames: torch.Tensor) -> float:
    times = []
    for t in range(frames.shape[1]):
        t0 = time.perf_counter()
        fn(frames[:, t])
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[frames.shape[1] // 2:]))  # steady state: window already full


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_preset(args.preset))
    p = tok.cfg.tokens_per_frame
    model = Transformer(model_preset(args.preset, codebook_size=tok.vocab_size, tokens_per_frame=p,
                                     max_seq_len=2 + args.window * p))
    enc = TotoEncoder(tok, model)
    frames = torch.from_numpy(moving_squares(1, 2 * args.window, size=tok.cfg.image_size))
    frames = frames[:, : max(args.steps, args.window + 4)]
    cached = StreamingEncoder(enc, window=args.window, mode="cached")
    recompute = StreamingEncoder(enc, window=args.window, mode="recompute")
    ms_cached = median_ms(cached.step, frames)
    ms_recompute = median_ms(recompute.step, frames)
    ms_single = median_ms(lambda f: enc(f[:, None]), frames)
    print(f"encoder: {args.preset}, layer {enc.layer}/{model.cfg.n_layers}, {p} tokens/frame, "
          f"window {args.window} frames, {torch.get_num_threads()} threads")
    print(f"streaming (KV cache):       {ms_cached:8.2f} ms/step")
    print(f"recompute window (peer):    {ms_recompute:8.2f} ms/step   ratio recompute/streaming {ms_recompute / ms_cached:.2f}x")
    print(f"single frame alone (peer):  {ms_single:8.2f} ms/step   ratio single/streaming {ms_single / ms_cached:.2f}x")


if __name__ == "__main__":
    main()
