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
