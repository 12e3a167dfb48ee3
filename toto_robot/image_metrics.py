"""Image-quality numbers shared by the tokenizer's training, the demo and the LeRobot round trip
(numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def psnr_uint8(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB between two images (or batches) on the 0-255 scale: uint8 arrays,
    or float arrays / CPU tensors of decoded frames. inf when they are identical."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs arrays of one shape, got {a.shape} and {b.shape}")
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
