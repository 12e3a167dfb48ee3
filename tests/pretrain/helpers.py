"""Tiny videos and token shards for the pretraining tests (nothing from outside the test's tmp dir)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pretrain.data import VideoSource, write_video
from pretrain.shards import save_tokenizer, tokenize_sources
from toto_robot.synthetic import moving_squares
from toto_robot.tokenizer import Tokenizer, tokenizer_preset

SIZE = 32  # frame side: 4x4 tokens
CLIP, STRIDE = 4, 2  # 4-frame clips, one frame in 2: sequences of 1 + 4*16 + 1 tokens
REPO = Path(__file__).resolve().parents[2]


def gray_video(path: Path, n: int, step: int = 4, size: int = SIZE) -> Path:
    """Frame i is uniformly gray at level step*i: decoded frames tell which source frame they came from."""
    frames = np.repeat(np.repeat(np.repeat((np.arange(n) * step).astype(np.uint8)[:, None, None, None], size, 1),
                                 size, 2), 3, 3)
    return write_video(path, frames, fps=10)


def square_videos(root: Path, n: int = 4, frames: int = 24, size: int = 48) -> Path:
    for i, clip in enumerate(moving_squares(n, frames, size=size, seed=0)):
        write_video(root / f"v{i}.mp4", clip, fps=10)
    return root


def tiny_tokenizer(size: int = SIZE) -> Tokenizer:
    import torch

    torch.manual_seed(0)
    return Tokenizer(tokenizer_preset("tiny", image_size=size, channels=8, codebook_size=64, embed_dim=8)).eval()


def make_shards(tmp: Path, size: int = SIZE, videos: Path | None = None, name: str = "videos") -> Path:
    """Videos -> a (random, untrained) tiny tokenizer -> token shards at `size` px."""
    videos = videos or square_videos(tmp / "videos")
    tok_path = tmp / "tokenizer"
    if not tok_path.exists():
        save_tokenizer(tok_path, tiny_tokenizer())
    from pretrain.shards import load_tokenizer

    out = tmp / f"tokens{size}.zarr"
    src = VideoSource(name, videos, size=size, clip_frames=CLIP, stride=STRIDE)
    tokenize_sources([src], load_tokenizer(tok_path), out, tokenizer_path=str(tok_path), progress=False)
    return out


def command(module: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", f"toto_robot.commands.{module}", *overrides]
