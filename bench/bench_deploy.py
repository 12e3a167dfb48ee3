"""Deployment loop latency: the reference policy (streaming encoder + MLP chunk head) in the fixed-rate loop,
for the tiny and small encoders, one and two cameras, the KV-cached streaming encoder against its peer,
recomputing the temporal window every step.

    python bench/bench_deploy.py [--presets tiny small] [--rate 10] [--steps 40] [--window 8] [--threads 2]

The robot replays generated camera frames instantly, so what is timed is the loop and the policy, not a
simulator. Per configuration:
- inference per step (one chunk: encode the new frame of every camera + head), p50/p99, timed synchronously
  with the temporal window full, one call per frame: the policy's own latency;
- in the loop at the target rate (inference in the background worker): the loop's step latency (tick due ->
  action sent) p50/p99, the achieved rate against the target, and the stale actions dropped per chunk.
Then the ratio recompute / streaming of the inference p50: the peer comparison.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from policies.reference import ReferencePolicy, ReferencePolicyConfig
from toto_robot.deploy import LoopConfig, SafetyConfig, TimedObservation, run_episode
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.model import Transformer, model_preset
from toto_robot.synthetic import moving_squares
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")


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


def build_policy(preset: str, n_cameras: int, window: int, mode: str) -> ReferencePolicy:
    torch.manual_seed(0)
    tok = Tokenizer(tokenizer_preset(preset))
    p = tok.cfg.tokens_per_frame
    model = Transformer(model_preset(preset, codebook_size=tok.vocab_size, tokens_per_frame=p,
                                     max_seq_len=2 + window * p))
    stream = StreamingEncoder(TotoEncoder(tok, model), window=window, mode=mode)
    return ReferencePolicy(stream, ReferencePolicyConfig(image_keys=list(CAMERAS[:n_cameras]), state_keys=["state"]))


def inference_ms(policies: dict[str, ReferencePolicy], robot: ReplayRobot, window: int, probe: int
                 ) -> dict[str, tuple[float, float]]:
    """p50 / p99 of predict_action_chunk over `probe` steps after the window has filled, for each policy.
    The policies take turns frame by frame, so a load spike from other processes hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in policies}
    for policy in policies.values():
        policy.reset()
    for i in range(window + probe):
        obs = robot.get_observation().data
        for name, policy in policies.items():
            t = time.perf_counter()
            policy.predict_action_chunk(obs)
            if i >= window:
                times[name].append(time.perf_counter() - t)
    return {name: tuple(float(v) for v in np.percentile(np.asarray(ts) * 1e3, [50, 99])) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--rate", type=float, default=10.0, help="control rate, Hz")
    ap.add_argument("--steps", type=int, default=40, help="ticks per configuration")
    ap.add_argument("--window", type=int, default=8, help="streaming window, frames")
    ap.add_argument("--probe", type=int, default=8, help="synchronous inference steps timed after the window fills")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    # holds for missing actions are expected when inference is slower than the chunk lasts
    logging.getLogger("toto_robot.deploy").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    loop = LoopConfig(rate_hz=args.rate, n_steps=args.steps, max_hold_s=60.0)
    safety = SafetyConfig(max_delta=None)
    print(f"loop {args.rate:g} Hz, {args.steps} ticks, window {args.window} frames, {torch.get_num_threads()} threads")
    header = (f"{'encoder':7} {'cams':>4} {'mode':9} | {'infer p50':>9} {'p99':>7} | {'step p50':>8} {'p99':>6} | "
              f"{'rate Hz':>7} {'/target':>7} | {'dropped/chunk':>13}")
    print(header)
    print("-" * len(header))
    p50 = {}
    for preset in args.presets:
        for n_cameras in (1, 2):
            policies = {mode: build_policy(preset, n_cameras, args.window, mode) for mode in ("cached", "recompute")}
            robot = ReplayRobot(n_cameras, policies["cached"].encoder.image_size)
            sync = inference_ms(policies, robot, args.window, args.probe)
            for mode, policy in policies.items():
                (i50, i99), t = sync[mode], run_episode(robot, policy, loop, safety).timing
                p50[preset, n_cameras, mode] = i50
                print(f"{preset:7} {n_cameras:>4} {mode:9} | {i50:7.1f}ms {i99:5.1f}ms"
                      f" | {t['step_p50_ms']:6.2f}ms {t['step_p99_ms']:4.1f}ms | {t['achieved_rate_hz']:7.2f} "
                      f"{t['achieved_rate_hz'] / args.rate:7.2f} | {t['dropped_actions'] / max(t['chunks'], 1):13.2f}")
    print()
    for preset in args.presets:
        for n_cameras in (1, 2):
            ratio = p50[preset, n_cameras, "recompute"] / p50[preset, n_cameras, "cached"]
            print(f"{preset}, {n_cameras} camera(s): inference p50 recompute / streaming = {ratio:.2f}x")


if __name__ == "__main__":
    main()
