"""Environment speed: our gymnasium wrapper vs raw robosuite, and rendering with vs without our settings.

    python bench/bench_envs.py [--task Lift] [--steps 100] [--size 84]

1. Steps per second, zero actions, same cameras and renderer settings on both sides: the ratio is the
   wrapper's own cost (upright image copies, float32 proprioception, the success check, GL context switch).
2. Offscreen frames per second for one camera with robosuite's scene flags (all of mujoco's defaults on)
   vs ours (reflections off).
Prints each pair and their ratio (ours / peer).
"""

from __future__ import annotations

import argparse
import time

import mujoco
import numpy as np
import robosuite

import envs
from envs.robosuite_env import TASKS, RobosuiteEnv

CAMERAS = ("agentview", "robot0_eye_in_hand")


def raw_env(task: str, cameras: tuple[str, ...], size: int, reflection: bool):
    env = robosuite.make(
        TASKS[task].robosuite_name, robots="Panda", has_renderer=False, has_offscreen_renderer=bool(cameras),
        use_camera_obs=bool(cameras), camera_names=list(cameras) or "agentview", camera_heights=size,
        camera_widths=size, ignore_done=True, hard_reset=False,
    )
    if cameras:
        env.sim._render_context_offscreen.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(reflection)
    return env


def interleaved_rates(ours, peer, n: int, rounds: int = 5) -> tuple[float, float]:
    """Calls per second of two functions, timed in alternating blocks so that load from other processes on
    the machine falls on both alike."""
    ours(), peer()  # warm-up
    seconds = {"ours": 0.0, "peer": 0.0}
    block = max(n // rounds, 1)
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("peer", peer)):
            start = time.perf_counter()
            for _ in range(block):
                fn()
            seconds[name] += time.perf_counter() - start
    return block * rounds / seconds["ours"], block * rounds / seconds["peer"]


def bench_steps(task: str, cameras: tuple[str, ...], size: int, steps: int) -> tuple[float, float]:
    raw = raw_env(task, cameras, size, reflection=False)
    raw.reset()
    ours_env = RobosuiteEnv(task=task, cameras=cameras, image_size=size)
    ours_env.reset(seed=0)
    context = raw.sim._render_context_offscreen
    action = np.zeros(7)

    def raw_step():
        if context is not None:  # two envs in one process: each renders in its own GL context
            context.gl_ctx.make_current()
        raw.step(action)

    action32 = action.astype(np.float32)
    ours, peer = interleaved_rates(lambda: ours_env.step(action32), raw_step, steps)
    raw.close()
    ours_env.close()
    return ours, peer


def bench_render(task: str, size: int, frames: int) -> tuple[float, float]:
    env = RobosuiteEnv(task=task, cameras=("agentview",), image_size=size)
    env.reset(seed=0)
    sim = env._env.sim
    flags = sim._render_context_offscreen.scn.flags

    def render(reflection: int):
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = reflection  # robosuite renders with 1, we with 0
        sim.render(camera_name="agentview", width=size, height=size)

    ours, peer = interleaved_rates(lambda: render(0), lambda: render(1), frames)
    env.close()
    return ours, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="Lift", choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    args = parser.parse_args()
    print(f"task {args.task}, {args.steps} steps, {args.size}x{args.size} images, robosuite {robosuite.__version__}")
    for cameras in ((), CAMERAS):
        ours, peer = bench_steps(args.task, cameras, args.size, args.steps)
        label = "+".join(cameras) or "no cameras"
        print(f"steps/s [{label}]: ours {ours:.1f}, raw robosuite {peer:.1f}, ratio {ours / peer:.3f}")
    for size in (args.size, 256):
        ours, peer = bench_render(args.task, size, args.steps)
        print(f"frames/s agentview {size}px: ours (no reflections) {ours:.1f}, robosuite defaults {peer:.1f}, "
              f"ratio {ours / peer:.2f}")
    print(f"({len(envs.TASKS)} tasks registered; rendering backend MUJOCO_GL=egl unless a display is set)")


if __name__ == "__main__":
    main()
