"""mp4 writing through PyAV (the encoder lerobot already depends on): rollout videos and synthetic clips."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | os.PathLike, frames: np.ndarray | Sequence[np.ndarray], fps: int, *,
              crf: int | None = None, codec: str = "libx264") -> Path:
    """uint8 (H, W, 3) frames ((T, H, W, 3) array or a list; H and W even for yuv420p) -> an mp4 at `path`.
    `crf`: libx264's quality (0 lossless, 10 near-lossless, None the codec's default, 23)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"crf": str(crf)} if crf is not None and codec == "libx264" else {}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path
