"""Frames: the one function that turns a camera or video frame into the encoder's square image
(`preprocess_frame`, `preprocess_frames`), and the one place that says what a frame tensor must look like
(`as_frames`, `to_uint8`).

Every path that brings pixels to the encoder calls `preprocess_frame`: the pretraining sources (videos,
images, trajectory stores; pretrain/data.py) and the real robot's observations (envs/robot.py). The
simulated cameras render at the policy's size and the stores keep frames at that size, so BC training, the
feature cache and deployment resize nothing; the encoder checks the size (`as_frames(image_size=...)`).

Preprocessing needs numpy and Pillow only: torch is imported where a tensor is made, so the robot side can
use it without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def preprocess_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: centre crop to a square, then box (area) resampling.

    Crop: the largest centred square, min(H, W) on a side, taken before resampling; when |H - W| is odd the
    extra row or column comes off the bottom or the right. Nothing is cropped from a square frame.

    Resampling: Pillow's BOX filter, `Image.resize(..., Image.Resampling.BOX)`: each output pixel averages
    the input pixels its footprint covers, weighted by the covered fraction, so any ratio (480 -> 64 is
    7.5) is anti-aliased and nothing is sharpened or ringed. Pillow filters in two separable passes
    (horizontal, then vertical), each rounded to uint8, so a result can differ by one level from the exact
    average. A frame smaller than `size` is enlarged by pixel replication (a box filter enlarging is
    nearest-neighbour); no shipped camera does that. A square frame of `size` comes back unchanged. The result
    is always a new, writable array.
    """
    # Why box: area averaging is what the video path (swscale AREA) and the robot path (cv2 INTER_AREA) already
    # meant before they were merged here; the image path's bicubic sharpened where they averaged. Why Pillow:
    # pretraining already needs it to read image files, and `cv2` arrives only through other packages, as two
    # wheels that both install that module (opencv-python from robosuite, opencv-python-headless from lerobot).
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame: expected an (H, W, 3) uint8 array, got {got}")
    _check_size(size)
    h, w = frame.shape[:2]
    s = min(h, w)
    if s == 0:
        raise ValueError(f"frame: expected a non-empty image, got shape {frame.shape}")
    top, left = (h - s) // 2, (w - s) // 2
    if s == size:
        return frame[top:top + s, left:left + s].copy()
    image = Image.fromarray(np.ascontiguousarray(frame))
    # np.array (not asarray): an array of its own, writable, as the copy above.
    return np.array(image.resize((size, size), Image.Resampling.BOX, box=(left, top, left + s, top + s)))


def preprocess_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., size, size, 3) uint8: `preprocess_frame` on each frame."""
    _check_size(size)
    frames = np.asarray(frames)
    if frames.ndim < 3:
        raise ValueError(f"frames: expected (..., H, W, 3) uint8, got shape {frames.shape}")
    flat = frames.reshape(-1, *frames.shape[-3:])  # (N, H, W, 3)
    out = np.empty((len(flat), size, size, 3), np.uint8)  # (N, size, size, 3)
    for i, frame in enumerate(flat):
        out[i] = preprocess_frame(frame, size)
    return out.reshape(*frames.shape[:-3], size, size, 3)


def shift_frames(frames: np.ndarray, shifts: np.ndarray, pad: int) -> np.ndarray:
    """Random-shift augmentation (DrQ's pad-and-crop, the crop randomizer of diffusion_policy's image
    policies): (N, H, W, 3) uint8 frames, each padded by `pad` pixels with its edge pixels and cropped back
    to (H, W) at offset shifts[i] = (dy, dx) in [-pad, pad] from the centre. A zero shift returns the frame.

    Written here rather than taken from torchvision (not a dependency) so that the feature cache (numpy,
    frames of a store) and the end-to-end CNN (a training batch) shift frames with one function."""
    frames, shifts = np.asarray(frames), np.asarray(shifts)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (N, H, W, 3) uint8, got {frames.dtype} {frames.shape}")
    if shifts.shape != (len(frames), 2):
        raise ValueError(f"shifts: expected shape ({len(frames)}, 2) (dy, dx per frame), got {shifts.shape}")
    if pad < 0 or np.abs(shifts).max(initial=0) > pad:
        raise ValueError(f"shifts: expected offsets within [-pad, pad] = [-{pad}, {pad}], got max "
                         f"{np.abs(shifts).max(initial=0)}")
    h, w = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")  # (N, H + 2p, W + 2p, 3)
    out = np.empty_like(frames)
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return out


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size: expected a positive integer, got {size!r}")


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
    import torch

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
    elif frames.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = frames.float() * 2.0 - 1.0
    else:
        raise ValueError(f"frames: expected dtype uint8 (0-255) or float (0-1), got {frames.dtype}")
    return x.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, 3, H, W)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) floats in [-1, 1] -> (..., H, W, 3) uint8."""
    import torch

    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1)
