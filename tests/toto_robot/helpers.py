"""Tiny synthetic clips and models shared by the core tests."""

import numpy as np
import torch

from toto_robot.model import Transformer, model_preset
from toto_robot.tokenizer import Tokenizer, tokenizer_preset


def moving_squares(batch: int, frames: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """(B, T, H, W, 3) uint8 clips of coloured squares drifting over a gradient background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((batch, frames, size, size, 3), dtype=np.uint8)
    for b in range(batch):
        bg = rng.uniform(0, 120, 3)
        colour = rng.uniform(60, 255, 3)
        pos, vel = rng.uniform(0, size - 16, 2), rng.uniform(-3, 3, 2)
        for t in range(frames):
            img = bg[None, None] + 40 * (xx / size)[..., None]
            y, x = (pos + vel * t).astype(int) % (size - 16)
            img[y:y + 16, x:x + 16] = colour
            out[b, t] = img.clip(0, 255)
    return out


def tiny_models(codebook: int = 64, max_frames: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=codebook))
    model = Transformer(model_preset("tiny", codebook_size=tok.vocab_size, tokens_per_frame=tok.cfg.tokens_per_frame,
                                     max_seq_len=1 + max_frames * tok.cfg.tokens_per_frame + 1))
    return tok, model
