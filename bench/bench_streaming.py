"""Streaming encoder per-step time with a 16-frame window, against the two peers a control loop could
use instead: recomputing the window from scratch each step, and encoding the single new frame alone;
then the transformer alone (token ids given: the cache against recomputing the window, eager and static
cache), and threads 1 vs 2 vs the default with a competing busy process this benchmark starts and stops.

    python bench/bench_streaming.py [--preset tiny|small] [--model base] [--device cuda] [--window 16] [--steps 24]
`--preset` sizes the tokenizer (tiny: 64 px, small: 128 px) and, unless `--model` names another, the transformer.
Prints median ms per step, the ratios (above 1: streaming is faster) and the frame budget at 10 / 20 / 50 Hz;
writes results/bench/bench_streaming_<preset>.json."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.model import Transformer, model_preset
from toto_robot.results import run_context, write_record
from toto_robot.synthetic import moving_squares
from toto_robot.threads import competing_process, configure_threads, default_threads
from toto_robot.tokenizer import Tokenizer, tokenizer_preset


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(fn, frames: torch.Tensor) -> float:
    times = []
    for t in range(frames.shape[1]):
        t0 = time.perf_counter()
        fn(frames[:, t])
        _sync()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[frames.shape[1] // 2:]))  # steady state: window already full


def transformer_ms(streams: dict[str, StreamingEncoder], ids: torch.Tensor, window: int) -> dict[str, float]:
    """Median ms of the transformer step alone (ids (B, T, h, w) given), the streams taking turns per frame."""
    times: dict[str, list[float]] = {name: [] for name in streams}
    for s in streams.values():
        s.reset()
    with torch.no_grad():
        for t in range(ids.shape[1]):
            for name, s in streams.items():
                step = s._step_cached if s.mode == "cached" else s._step_recompute
                t0 = time.perf_counter()
                with s._step_autocast():
                    step(ids[:, t: t + 1], s.encoder.layer, False)
                _sync()
                if t >= window:
                    times[name].append(time.perf_counter() - t0)
    return {name: 1000 * float(np.median(ts)) for name, ts in times.items()}


def budget(ms: float) -> str:
    return ", ".join(f"{hz} Hz {ms / (1000 / hz):.0%}" for hz in (10, 20, 50))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--model", default=None, help="transformer preset (default: --preset), e.g. base or large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-threads-section", action="store_true", help="skip threads 1 vs 2 under load")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the thread policy's)")
    ap.add_argument("--out", default=None, help="default results/bench/bench_streaming_<preset>.json")
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    context = run_context()
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_preset(args.preset))
    p = tok.cfg.tokens_per_frame
    model = Transformer(model_preset(args.model or args.preset, codebook_size=tok.vocab_size, tokens_per_frame=p,
                                     max_seq_len=2 + args.window * p))
    enc = TotoEncoder(tok, model).to(args.device)
    frames = torch.from_numpy(moving_squares(1, 2 * args.window, size=tok.cfg.image_size))
    frames = frames[:, : max(args.steps, args.window + 4)]
    cached = StreamingEncoder(enc, window=args.window, mode="cached")
    recompute = StreamingEncoder(enc, window=args.window, mode="recompute")
    fast = StreamingEncoder(enc, window=args.window, tokenizer_backend="onnx", step_backend="static")
    ms_cached = median_ms(cached.step, frames)
    ms_recompute = median_ms(recompute.step, frames)
    ms_single = median_ms(lambda f: enc(f[:, None]), frames)
    ms_fast = median_ms(fast.step, frames)
    print(f"encoder: {args.preset} tokenizer, {args.model or args.preset} transformer on {args.device}, layer {enc.layer}/{model.cfg.n_layers}, {p} tokens/frame, "
          f"window {args.window} frames, {threads} threads, load average {context['load_average_1min']:.1f}")
    print(f"streaming (KV cache):       {ms_cached:8.2f} ms/step   frame budget {budget(ms_cached)}")
    print(f"streaming fast path:        {ms_fast:8.2f} ms/step   frame budget {budget(ms_fast)} "
          f"(onnx tokenizer, static cache)")
    print(f"recompute window (peer):    {ms_recompute:8.2f} ms/step   ratio recompute/streaming {ms_recompute / ms_cached:.2f}x")
    print(f"single frame alone (peer):  {ms_single:8.2f} ms/step   ratio single/streaming {ms_single / ms_cached:.2f}x")

    ids = enc.tokenizer.encode(frames)  # (1, T, h, w)
    static = StreamingEncoder(enc, window=args.window, step_backend="static")
    tr = transformer_ms({"cached": cached, "static": static, "recompute": recompute}, ids, args.window)
    print(f"transformer only: cached {tr['cached']:.2f} ms, static cache {tr['static']:.2f} ms, "
          f"recompute {tr['recompute']:.2f} ms")
    print(f"transformer only: ratio recompute/streaming {tr['recompute'] / tr['static']:.2f}x")

    under_load = {}
    if not args.no_threads_section:
        with competing_process() as pid:
            for n in sorted({1, 2, default_threads()}):
                configure_threads(n)
                under_load[n] = median_ms(cached.step, frames)
            print(f"with a competing busy process (pid {pid}): "
                  + ", ".join(f"threads {n} {ms:.2f} ms/step" for n, ms in under_load.items())
                  + f"; default ({default_threads()}) / best "
                  f"{under_load[default_threads()] / min(under_load.values()):.2f}x")
    configure_threads(threads)
    figures = {"streaming_ms": ms_cached, "fast_ms": ms_fast, "recompute_ms": ms_recompute, "single_ms": ms_single,
               "ratio_recompute_streaming": ms_recompute / ms_cached,
               "transformer_only_ms": tr, "transformer_only_ratio_recompute_streaming": tr["recompute"] / tr["static"],
               "threads_under_load_ms": under_load, "window": args.window, "preset": args.preset}
    path = write_record(args.out or f"results/bench/bench_streaming_{args.preset}.json", figures, context)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
