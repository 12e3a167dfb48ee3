"""Deployment latency of the BCPolicy that toto-deploy runs (streaming Toto encoder, attentive read-out, MLP
chunk head): the eager reference against the fast path (toto_robot/fast.py), for each encoder preset and camera
count, then the thread policy under a competing busy process.

    python bench/bench_deploy.py [--presets tiny small] [--window 8] [--probe 8] [--steps 30] [--threads N]

Variants: eager (tokenizer and step "eager"), fast (tokenizer "onnx" + static cache: the same tokens), fast_bf16
(tokenizer and step in bf16: lossy, its token agreement and features max abs diff are printed), distilled (the
fast path with a light encoder, toto_robot/distill.py: lossy, timed on random weights; its agreement with a
trained teacher is in results/distill/), distilled_bf16 (the light encoder in ONNX Runtime and the step in bf16).
Per variant:
predict_action_chunk p50 / p99 with the temporal window full (the variants take turns frame by frame, so load
spikes hit them alike), the warm-up (first call: ONNX export and session, or compile), the loop's step latency
and achieved rate at --rate, and the frame budget at 10 / 20 / 50 Hz. Each preset ends with the line
`<preset> 1 camera: fast p50 X ms, eager Y ms, speedup Z.ZZx`, after a floor line: the FLOPs per frame (torch's
FlopCounterMode) over this CPU's float32 matmul rate measured in the same run. Then threads 1 vs 2 vs the default
for eager, fast and distilled, idle and with a busy process this benchmark starts and stops.
Results: results/bench/bench_deploy.json.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict

import numpy as np
import torch
from torch.utils import flop_counter

from policies.bc import BCPolicy, PolicyConfig
from toto_robot.deploy import LoopConfig, SafetyConfig, TimedObservation, run_episode
from toto_robot.distill import student_of
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.fast import token_agreement
from toto_robot.model import Transformer, model_preset
from toto_robot.results import run_context, write_record
from toto_robot.synthetic import moving_squares
from toto_robot.threads import competing_process, configure_threads, default_threads
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")
VARIANTS = {"eager": ("eager", "eager"), "fast": ("onnx", "static"), "fast_bf16": ("bf16", "bf16"),
            "distilled": ("onnx", "static"), "distilled_bf16": ("onnx", "bf16")}
DISTILLED = ("distilled", "distilled_bf16")  # the variants that run the light encoder
# The light encoder's width per preset (toto_robot/distill.py): the students whose held-out token agreement with
# a trained teacher is recorded in results/distill/. Here it is timed on random weights: its speed does not
# depend on them, its agreement does (so it is not measured here).
LIGHT_CHANNELS = {"tiny": 16, "small": 32}
RATES = (10, 20, 50)


class ReplayRobot:
    """Generated frames for each camera and a fixed state, returned instantly; actions are discarded."""

    action_dim = 7

    def __init__(self, n_cameras: int, size: int):
        self.frames = moving_squares(n_cameras, 64, size=size)  # (N, T, S, S, 3)
        self.i = 0

    def get_observation(self) -> TimedObservation:
        t = self.i % self.frames.shape[1]
        self.i += 1
        data = {CAMERAS[c]: self.frames[c, t] for c in range(self.frames.shape[0])}
        data["state"] = np.zeros(9, np.float32)
        return TimedObservation(data, time.perf_counter())

    def send_action(self, action: np.ndarray) -> None:
        pass


def build_encoder(preset: str, window: int) -> TotoEncoder:
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_preset(preset))
    p = tok.cfg.tokens_per_frame
    model = Transformer(model_preset(preset, codebook_size=tok.vocab_size, tokens_per_frame=p,
                                     max_seq_len=2 + window * p))
    return TotoEncoder(tok, model)


def light_encoder(encoder: TotoEncoder, preset: str) -> TotoEncoder:
    """The encoder with its tokenizer's encoder replaced by a (random) light one of the preset's width."""
    torch.manual_seed(0)
    light = TotoEncoder(student_of(encoder.tokenizer, LIGHT_CHANNELS[preset]), encoder.model, layer=encoder.layer)
    return light.eval()


def build_policy(encoder: TotoEncoder, n_cameras: int, window: int, variant: str) -> BCPolicy:
    tokenizer_backend, step_backend = VARIANTS[variant]
    cfg = PolicyConfig(cameras=CAMERAS[:n_cameras], proprio_keys=("state",), proprio_dims=(9,), action_dim=7,
                       image_size=encoder.image_size, encoder_window=window,
                       tokenizer_config=asdict(encoder.tokenizer.cfg), model_config=encoder.cfg.to_dict(),
                       tokenizer_backend=tokenizer_backend, step_backend=step_backend)
    return BCPolicy(cfg, encoder=encoder).eval()  # same seed: the same head weights for every variant


def inference_ms(policies: dict[str, BCPolicy], robot: ReplayRobot, window: int, probe: int) -> dict[str, dict]:
    """p50 / p99 of predict_action_chunk over `probe` steps after the window has filled, and the first call."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    first: dict[str, float] = {}
    for policy in policies.values():
        policy.reset()
    for i in range(window + probe):
        obs = robot.get_observation().data
        for name, policy in policies.items():
            t = time.perf_counter()
            policy.predict_action_chunk(obs)
            dt = time.perf_counter() - t
            if i == 0:
                first[name] = dt
            if i >= window:
                times[name].append(dt)
    out = {}
    for name, ts in times.items():
        p50, p99 = (float(v) for v in np.percentile(np.asarray(ts) * 1e3, [50, 99]))
        out[name] = {"p50_ms": p50, "p99_ms": p99, "warmup_s": max(0.0, first[name] - p50 / 1e3)}
    return out


def agreement(encoder: TotoEncoder, robot: ReplayRobot, n_cameras: int, window: int, variant: str) -> dict:
    """The variant's streaming encoder against eager on the same frames: token agreement, features max abs diff."""
    tokenizer_backend, step_backend = VARIANTS[variant]
    eager = StreamingEncoder(encoder, window=window)
    fast = StreamingEncoder(encoder, window=window, tokenizer_backend=tokenizer_backend, step_backend=step_backend)
    frames = torch.from_numpy(robot.frames[:n_cameras, : 2 * window])
    agree, diff = [], 0.0
    for t in range(frames.shape[1]):
        a, b = eager.step(frames[:, t]), fast.step(frames[:, t])
        agree.append(token_agreement(b.tokens, a.tokens))
        diff = max(diff, float((b.features - a.features).abs().max()))
    return {"token_agreement": float(np.mean(agree)), "features_max_abs_diff": diff,
            "tokenizer_backend_used": fast.tokenizer.backend}


def budget(p50: float, p99: float) -> str:
    return "  ".join(f"{hz}Hz {'ok' if p99 <= 1e3 / hz else ('p50' if p50 <= 1e3 / hz else 'over')}"
                     f"({p50 / (1e3 / hz):.0%})" for hz in RATES)


def gflop(fn) -> float:
    """GFLOP of one call, counted by torch's FlopCounterMode (matmuls, convolutions, attention). Its table has no
    entry for the CPU flash-attention kernel that SDPA dispatches to here, so that one is added with torch's own
    attention formula."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v)}
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_gflops(n: int = 1024, repeats: int = 20) -> float:
    """This CPU's float32 matmul rate on the current thread count: the peer the step's FLOP rate is read against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def floor_section(encoder: TotoEncoder, light: TotoEncoder, window: int, preset: str, measured: dict) -> dict:
    """FLOPs per frame (1 camera) of the transformer step with a full window, the teacher tokenizer and the light
    encoder, and the time they need at this CPU's matmul rate: the float32 floor the fast paths are read against."""
    frames = torch.from_numpy(ReplayRobot(1, encoder.image_size).frames[:, : window + 1])  # (1, T, S, S, 3)
    stream = StreamingEncoder(encoder, window=window)
    for t in range(window):
        stream.step(frames[:, t])
    step_and_tokenizer = gflop(lambda: stream.step(frames[:, window]))
    teacher = gflop(lambda: encoder.tokenizer.encode(frames[:, window:]))
    student = gflop(lambda: light.tokenizer.encode(frames[:, window:]))
    rate = matmul_gflops()
    step = step_and_tokenizer - teacher
    floor = {"fast": (step + teacher) / rate * 1e3, "distilled": (step + student) / rate * 1e3}
    out = {"transformer_step_gflop": step, "teacher_tokenizer_gflop": teacher, "light_encoder_gflop": student,
           "matmul_gflops": rate, "floor_ms": floor}
    print(f"{preset} floor: transformer step {step:.2f} GFLOP, tokenizer {teacher:.2f}, light encoder "
          f"{student:.2f} per frame; float32 matmul here {rate:.0f} GFLOP/s, so fast >= {floor['fast']:.1f} ms (measured "
          f"{measured['fast']['p50_ms']:.1f}), distilled >= {floor['distilled']:.1f} ms (measured "
          f"{measured['distilled']['p50_ms']:.1f})")
    return out


def thread_section(encoder_by_preset: dict[str, TotoEncoder], light_by_preset: dict[str, TotoEncoder], window: int,
                   probe: int) -> dict:
    """Eager, fast and distilled p50 with threads 1, 2 and the default, first idle, then while a busy process
    runs (started and stopped here)."""
    counts = sorted({1, 2, default_threads()})
    out = {}

    def measure(label: str) -> None:
        for preset, encoder in encoder_by_preset.items():
            for n in counts:
                configure_threads(n)
                policies = {v: build_policy(light_by_preset[preset] if v in DISTILLED else encoder, 1, window, v)
                            for v in ("eager", "fast", "distilled")}
                res = inference_ms(policies, ReplayRobot(1, encoder.image_size), window, probe)
                out[f"{preset}/{label}/threads={n}"] = res
                print(f"  {preset:6} threads {n}: eager p50 {res['eager']['p50_ms']:7.1f} ms, "
                      f"fast p50 {res['fast']['p50_ms']:7.1f} ms, distilled p50 {res['distilled']['p50_ms']:7.1f} ms")
            d = out[f"{preset}/{label}/threads={default_threads()}"]["fast"]["p50_ms"]
            best = min(out[f"{preset}/{label}/threads={n}"]["fast"]["p50_ms"] for n in counts)
            print(f"  {preset:6} default / best thread count (fast, {label}): {d / best:.2f}x")

    print(f"\nthreads with nothing else running, 1 camera, default = {default_threads()}:")
    measure("idle")
    with competing_process() as pid:
        print(f"threads under a competing busy process (pid {pid}), 1 camera, default = {default_threads()}:")
        measure("busy")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--rate", type=float, default=10.0, help="control rate of the loop runs, Hz")
    ap.add_argument("--steps", type=int, default=30, help="ticks per loop run")
    ap.add_argument("--window", type=int, default=8, help="streaming window, frames")
    ap.add_argument("--probe", type=int, default=8, help="synchronous inference steps timed after the window fills")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the thread policy's)")
    ap.add_argument("--no-threads-section", action="store_true", help="skip threads 1 vs 2 under load")
    ap.add_argument("--out", default="results/bench/bench_deploy.json")
    args = ap.parse_args()
    logging.getLogger("toto_robot.deploy").setLevel(logging.ERROR)  # holds are expected when inference is slow
    threads = configure_threads(args.threads)
    context = run_context()
    loop = LoopConfig(rate_hz=args.rate, n_steps=args.steps, max_hold_s=60.0)
    safety = SafetyConfig(max_delta=None)
    print(f"BCPolicy (toto, attentive read-out, mlp head), window {args.window} frames, {threads} threads, "
          f"load average {context['load_average_1min']:.1f} on {context['cpu_count']} cores")
    header = (f"{'encoder':7} {'cams':>4} {'variant':14} | {'p50':>7} {'p99':>7} | {'warm-up':>7} | {'loop p50':>8} "
              f"{'rate':>6} | frame budget (p50 share)")
    print(header)
    print("-" * len(header))
    records, encoders, lights, summary, floors = {}, {}, {}, [], {}
    for preset in args.presets:
        encoders[preset] = encoder = build_encoder(preset, args.window)
        lights[preset] = light = light_encoder(encoder, preset)
        for n_cameras in (1, 2):
            policies = {v: build_policy(light if v in DISTILLED else encoder, n_cameras, args.window, v)
                        for v in VARIANTS}
            robot = ReplayRobot(n_cameras, encoder.image_size)
            sync = inference_ms(policies, robot, args.window, args.probe)
            for variant, policy in policies.items():
                r = sync[variant]
                t = run_episode(robot, policy, loop, safety).timing
                r |= {"loop_step_p50_ms": t["step_p50_ms"], "loop_rate_hz": t["achieved_rate_hz"]}
                if variant != "eager" and variant not in DISTILLED:
                    r |= agreement(encoder, robot, n_cameras, args.window, variant)
                records[f"{preset}/{n_cameras}cam/{variant}"] = r
                print(f"{preset:7} {n_cameras:>4} {variant:14} | {r['p50_ms']:5.1f}ms {r['p99_ms']:5.1f}ms | "
                      f"{r['warmup_s']:6.2f}s | {t['step_p50_ms']:6.2f}ms {t['achieved_rate_hz']:6.2f} | "
                      f"{budget(r['p50_ms'], r['p99_ms'])}")
        lines = {}
        for n_cameras in (1, 2):
            e, f, b, d, db = (records[f"{preset}/{n_cameras}cam/{v}"] for v in VARIANTS)
            s = "camera" if n_cameras == 1 else "cameras"
            lines["fast", n_cameras] = (f"{preset} {n_cameras} {s}: fast p50 {f['p50_ms']:.1f} ms, eager "
                                        f"{e['p50_ms']:.1f} ms, speedup {e['p50_ms'] / f['p50_ms']:.2f}x")
            lines["bf16", n_cameras] = (f"{preset} {n_cameras} {s}: fast_bf16 p50 {b['p50_ms']:.1f} ms, speedup "
                                        f"{e['p50_ms'] / b['p50_ms']:.2f}x, token agreement "
                                        f"{b['token_agreement']:.3f}, features max abs diff "
                                        f"{b['features_max_abs_diff']:.2e}")
            lines["distilled", n_cameras] = (f"{preset} {n_cameras} {s}: distilled (light encoder "
                                             f"{LIGHT_CHANNELS[preset]} wide, onnx + static) p50 {d['p50_ms']:.1f} ms, "
                                             f"speedup {e['p50_ms'] / d['p50_ms']:.2f}x (token agreement: "
                                             f"results/distill/)")
            lines["distilled_bf16", n_cameras] = (f"{preset} {n_cameras} {s}: distilled_bf16 (onnx + bf16 step) p50 "
                                                  f"{db['p50_ms']:.1f} ms, speedup {e['p50_ms'] / db['p50_ms']:.2f}x")
        floors[preset] = floor_section(encoder, light, args.window, preset,
                                       {v: records[f"{preset}/1cam/{v}"] for v in VARIANTS})
        # the preset's last line: one camera on the fast path
        for key in (("bf16", 1), ("bf16", 2), ("distilled", 1), ("distilled", 2), ("distilled_bf16", 1),
                    ("distilled_bf16", 2), ("fast", 2), ("fast", 1)):
            summary.append(lines[key])
            print(lines[key])
    thread_records = {} if args.no_threads_section else thread_section(encoders, lights, args.window, args.probe)
    configure_threads(threads)
    path = write_record(args.out, {"figures": records, "thread_policy": thread_records, "summary": summary,
                                   "floor": floors, "window": args.window, "probe_steps": args.probe}, context)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
