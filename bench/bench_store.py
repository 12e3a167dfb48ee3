"""Benchmark the trajectory store: compression, size on disk, and window sampling vs LeRobotDataset.

    python bench/bench_store.py [--episodes 6] [--steps 50] [--windows 300] [--out DIR]

Episodes are rendered from robosuite's Lift (Panda, two 84x84 cameras, a smooth random action
walk), so image compression is measured on real renders. Then, on the same episodes:

1. Blosc codecs on the store's chunks (one frame per image chunk, one array per low-dim key):
   compression ratio and decode speed, the evidence behind the store's default codec.
2. Store size on disk vs raw bytes, and windows/s, for 1 and 4 frames per image chunk.
3. Windows per second (diffusion_policy's robosuite setting: 2 observation steps, 16 action steps)
   from ``WindowDataset`` and from ``LeRobotDataset`` with the matching ``delta_timestamps``, both
   reading the same episodes in the same random order, printed as a ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numcodecs
import numpy as np

from toto_robot.lerobot_io import export_lerobot, feature_names
from toto_robot.sampler import WindowDataset
from toto_robot.store import TrajectoryStore

CAMERAS = ("agentview", "robot0_eye_in_hand")
LOW_DIM = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
N_OBS, HORIZON, N_ACT = 2, 16, 8  # diffusion_policy robosuite image setting


def render_episodes(n_episodes: int, steps: int, size: int, seed: int) -> list[dict[str, np.ndarray]]:
    import robosuite

    env = robosuite.make(
        "Lift",
        robots="Panda",
        has_renderer=False,
        has_offscreen_renderer=True,
        use_camera_obs=True,
        camera_names=list(CAMERAS),
        camera_heights=size,
        camera_widths=size,
        control_freq=20,
        horizon=steps + 1,
    )
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n_episodes):
        obs = env.reset()
        action = np.zeros(7)
        frames = {key: [] for key in (*[f"{c}_image" for c in CAMERAS], *LOW_DIM, "action")}
        for _ in range(steps):
            action = 0.9 * action + 0.1 * rng.uniform(-1, 1, 7)  # smooth random walk
            for key, values in frames.items():
                values.append(action if key == "action" else obs[key])
            obs, _, _, _ = env.step(action)
        episodes.append(
            {
                key: np.asarray(v, np.uint8 if key.endswith("_image") else np.float32)
                for key, v in frames.items()
            }
        )
    env.close()
    return episodes


def codec_table(episodes: list[dict[str, np.ndarray]]) -> None:
    cams = [f"{c}_image" for c in CAMERAS]
    low_dim = [np.concatenate([e[k] for e in episodes]) for k in (*LOW_DIM, "action")]
    blosc = numcodecs.Blosc
    candidates = {
        "zstd-3 noshuffle": blosc("zstd", 3, blosc.NOSHUFFLE),
        "zstd-3 bitshuffle": blosc("zstd", 3, blosc.BITSHUFFLE),
        "zstd-1 noshuffle": blosc("zstd", 1, blosc.NOSHUFFLE),
        "zstd-5 noshuffle": blosc("zstd", 5, blosc.NOSHUFFLE),
        "zstd-9 noshuffle": blosc("zstd", 9, blosc.NOSHUFFLE),
        "lz4-5 noshuffle": blosc("lz4", 5, blosc.NOSHUFFLE),
        "lz4-5 bitshuffle": blosc("lz4", 5, blosc.BITSHUFFLE),
        "zlib-5 noshuffle": blosc("zlib", 5, blosc.NOSHUFFLE),
    }
    print("\n1. Blosc codecs on store chunks (ratio = raw / compressed; image decode in frames/s)")
    print("   (byte-shuffle is a no-op on uint8, so 'noshuffle' also stands for it)")
    header = "".join(f"{f'img x{k} ratio':>14}{f'x{k} decode':>11}" for k in (1, 4))
    print(f"   {'codec':<18}{header}{'low-dim ratio':>15}")
    for name, codec in candidates.items():
        line = f"   {name:<18}"
        for steps in (1, 4):  # frames per chunk
            chunks = [
                np.ascontiguousarray(e[cam][t : t + steps])
                for e in episodes
                for cam in cams
                for t in range(0, len(e[cam]), steps)
            ]
            encoded = [codec.encode(c) for c in chunks]
            start = time.perf_counter()
            for blob in encoded:
                codec.decode(blob)
            decode = sum(len(c) for c in chunks) / (time.perf_counter() - start)
            ratio = sum(c.nbytes for c in chunks) / sum(len(b) for b in encoded)
            line += f"{ratio:>14.2f}{decode:>11.0f}"
        low_ratio = sum(a.nbytes for a in low_dim) / sum(len(codec.encode(a)) for a in low_dim)
        print(f"{line}{low_ratio:>15.2f}")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def time_windows(dataset, order: np.ndarray, budget_s: float) -> tuple[float, int]:
    """Windows per second over ``order``, stopping after ``budget_s`` seconds."""
    dataset[int(order[0])]  # warm caches and lazy opens
    start, n = time.perf_counter(), 0
    for i in order:
        dataset[int(i)]
        n += 1
        if time.perf_counter() - start > budget_s:
            break
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--windows", type=int, default=300, help="random windows timed per reader")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds at most per reader")
    parser.add_argument("--out", type=Path, default=None, help="where to write the stores (default: tmp)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_store_"))
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    episodes = render_episodes(args.episodes, args.steps, args.size, seed=0)
    n_steps = args.episodes * args.steps
    print(
        f"rendered {args.episodes} robosuite Lift episodes x {args.steps} steps in {time.perf_counter() - start:.0f}s"
    )
    codec_table(episodes)

    schema = {key: (value.shape[1:], value.dtype) for key, value in episodes[0].items()}
    horizons = {key: (HORIZON if key == "action" else N_OBS) for key in schema}
    raw = sum(v.nbytes for e in episodes for v in e.values())
    rng = np.random.default_rng(0)
    print("\n2. store on disk vs raw bytes, and random windows/s with images read from zarr")
    stores = {}
    for label, image_steps in (("1 frame per image chunk", 1), ("default (4 frames per chunk)", None)):
        chunk_steps = {} if image_steps is None else {f"{c}_image": image_steps for c in CAMERAS}
        path = out / f"store_chunk{image_steps or 'default'}.zarr"
        store = TrajectoryStore.create(
            path, schema, {"fps": 20, "env": "Lift"}, chunk_steps=chunk_steps, overwrite=True
        )
        for i, episode in enumerate(episodes):
            store.add_episode(episode, {"task": "lift", "seed": i, "success": None, "source": "bench"})
        on_disk = dir_bytes(path)
        dataset = WindowDataset(store, horizons, pad_before=N_OBS - 1, pad_after=N_ACT - 1)
        rate, _ = time_windows(dataset, rng.permutation(len(dataset))[: args.windows], args.budget)
        print(
            f"   {label:<30} {on_disk / 1e6:6.2f} MB for {raw / 1e6:.2f} MB raw "
            f"({raw / on_disk:.2f}x smaller), {rate:7.1f} windows/s"
        )
        stores[label] = store
    store = stores["default (4 frames per chunk)"]

    export_lerobot(store, out / "lerobot", progress=False)
    lerobot_bytes = dir_bytes(out / "lerobot")
    print(
        f"   LeRobotDataset (mp4 video): {lerobot_bytes / 1e6:.2f} MB ({raw / lerobot_bytes:.2f}x smaller, lossy)"
    )

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = 20
    names = feature_names(store.schema)  # state keys share observation.state (and so its horizon)
    # LeRobot anchors windows at the current observation (the last of N_OBS): the same windows.
    deltas = {
        names[key]: [(d - (N_OBS - 1)) / fps for d in range(h)]
        for key, h in horizons.items()
    }
    peer = LeRobotDataset(
        "local/lerobot",
        root=out / "lerobot",
        delta_timestamps=deltas,
        video_backend="pyav",
        return_uint8=True,
    )
    ours_lazy = WindowDataset(store, horizons, pad_before=N_OBS - 1, pad_after=N_ACT - 1, in_memory="low_dim")
    ours_ram = WindowDataset(store, horizons, pad_before=N_OBS - 1, pad_after=N_ACT - 1, in_memory="all")

    print(f"\n3. random windows ({N_OBS} obs steps of 2 cameras + low-dim, {HORIZON} action steps), same run")
    rows = {}
    for name, dataset in (
        ("WindowDataset (images from zarr)", ours_lazy),
        ("WindowDataset (in memory)", ours_ram),
        ("LeRobotDataset (mp4, pyav)", peer),
    ):
        order = rng.permutation(len(dataset))[: args.windows]
        rows[name] = time_windows(dataset, order, args.budget)
        print(f"   {name:<34} {rows[name][0]:>9.1f} windows/s  ({rows[name][1]} windows)")
    peer_rate = rows["LeRobotDataset (mp4, pyav)"][0]
    for name in ("WindowDataset (images from zarr)", "WindowDataset (in memory)"):
        print(f"   ratio {name} / LeRobotDataset: {rows[name][0] / peer_rate:.1f}x")
    print(f"\nsteps: {n_steps}; stores written to {out}")


if __name__ == "__main__":
    main()
