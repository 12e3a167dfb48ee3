"""Checking and converting frame batches: the one place that says what a frame tensor must look like."""

from __future__ import annotations

import numpy as np
import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_frames(
    frames: torch.Tensor | np.ndarray,
    *,
    size_multiple: int,
    max_frames: int | None = None,
    image_size: int | None = None,
) -> torch.Tensor:
    """Validate (B, T, H, W, 3) frames and return float32 (B, T, 3, H, W) in [-1, 1].

    Accepted: uint8 in [0, 255] or float in [0, 1], as a torch tensor or numpy array.
    Raises ValueError (TypeError for something that is not an array) naming what was expected and what
    was given.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype.kind not in "uf":
            raise ValueError(f"frames: expected dtype uint8 or float, got numpy {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames: expected a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.ndim != 5:
        raise ValueError(
            f"frames: expected rank 5 (B, T, H, W, 3), got rank {frames.ndim} with shape {tuple(frames.shape)}"
        )
    b, t, h, w, c = frames.shape
    if c != 3:
        raise ValueError(f"frames: expected 3 channels last (B, T, H, W, 3), got {c} in shape {tuple(frames.shape)}")
    if h % size_multiple or w % size_multiple or h == 0 or w == 0:
        raise ValueError(
            f"frames: expected height and width divisible by {size_multiple} (the tokenizer's downsampling), "
            f"got {h}x{w}"
        )
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"frames: expected {image_size}x{image_size} (the checkpoint's resolution), got {h}x{w}")
    if max_frames is not None and t > max_frames:
        raise ValueError(f"frames: expected at most {max_frames} frames (the context length allows), got {t}")
    if t == 0 or b == 0:
        raise ValueError(f"frames: expected at least one clip of one frame, got shape {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        x = frames.float() / 127.5 - 1.0
    elif frames.dtype in _FLOAT_DTYPES:
        x = frames.float() * 2.0 - 1.0
    else:
        raise ValueError(f"frames: expected dtype uint8 (0-255) or float (0-1), got {frames.dtype}")
    return x.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, 3, H, W)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) floats in [-1, 1] -> (..., H, W, 3) uint8."""
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)
