"""Generated clips for demos, tests and benchmarks when no recorded video is at hand."""

from __future__ import annotations

import numpy as np


def moving_squares(batch: int, frames: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """(B, T, H, W, 3) uint8 clips: a coloured square drifting over a gradient background."""
    rng = np.random.default_rng(seed)
    side = max(2, size // 4)
    xx = np.arange(size)[None, :, None] / size
    out = np.zeros((batch, frames, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        bg = rng.uniform(0, 120, 3)
        colour = rng.uniform(60, 255, 3)
        pos, vel = rng.uniform(0, size - side, 2), rng.uniform(-3, 3, 2) * size / 64
        for t in range(frames):
            img = np.broadcast_to(bg + 40 * xx, (size, size, 3)).copy()
            y, x = (pos + vel * t).astype(int) % (size - side)
            img[y:y + side, x:x + side] = colour
            out[b, t] = img.clip(0, 255)
    return out


def ego4d_folder(out, n_videos: int = 3, frames: int = 128, height: int = 96, width: int = 160, fps: int = 30,
                 seed: int = 0) -> dict:
    """A small folder in the layout Ego4D's download CLI writes (`ego4d --output_directory=OUT --datasets
    full_scale --metadata`): OUT/v2/full_scale/<video_uid>.mp4 and the metadata file OUT/v2/ego4d.json,
    whose `videos` list names each video by `video_uid` (its `clips` list, for the `clips` download, names
    files this folder does not have). The videos are moving squares, widened to landscape frames by repeating
    their edge columns, H.264 through PyAV. One more video is written but not listed: the manifest, not the
    folder, selects what is read. Returns the paths and the uids written."""
    import json
    import uuid
    from pathlib import Path

    from toto_robot.video import write_mp4

    if height % 2 or width % 2 or width < height:
        raise ValueError(f"height, width: expected even sizes with width >= height, got {height}, {width}")
    v2 = Path(out) / "v2"
    root = v2 / "full_scale"
    rng = np.random.default_rng(seed)
    uids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n_videos + 1)]
    left = (width - height) // 2
    clips = moving_squares(n_videos + 1, frames, size=height, seed=seed)  # (B, T, H, H, 3)
    clips = np.pad(clips, ((0, 0), (0, 0), (0, 0), (left, width - height - left), (0, 0)), mode="edge")
    for uid, clip in zip(uids, clips):
        write_mp4(root / f"{uid}.mp4", clip, fps, crf=10)
    listed, unlisted = uids[:n_videos], uids[n_videos]
    manifest = {
        "videos": [{"video_uid": u, "duration_sec": frames / fps} for u in listed],
        "clips": [{"clip_uid": str(uuid.UUID(bytes=rng.bytes(16), version=4)), "video_uid": u} for u in listed],
    }
    (v2 / "ego4d.json").write_text(json.dumps(manifest, indent=1))
    return {"root": root, "manifest": v2 / "ego4d.json", "listed": listed, "unlisted": unlisted}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m toto_robot.synthetic",
                                     description="Write a generated dataset folder.")
    parser.add_argument("layout", choices=["ego4d"], help="ego4d: ego4d_folder (Ego4D's download layout)")
    parser.add_argument("out_dir")
    parser.add_argument("--videos", type=int, default=3, help="videos listed in the manifest (one more is not)")
    parser.add_argument("--frames", type=int, default=128)
    args = parser.parse_args()
    made = ego4d_folder(args.out_dir, n_videos=args.videos, frames=args.frames)
    print(f"{len(made['listed'])} listed videos + 1 unlisted under {made['root']}; manifest: {made['manifest']}")
