"""Tiny models shared by the core tests."""

import torch

from toto_robot.model import Transformer, model_preset
from toto_robot.synthetic import moving_squares  # noqa: F401  (re-exported for the tests)
from toto_robot.tokenizer import Tokenizer, tokenizer_preset


def tiny_models(codebook: int = 64, max_frames: int = 8, seed: int = 0):
    torch.manual_seed(seed)
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=codebook))
    model = Transformer(model_preset("tiny", codebook_size=tok.vocab_size, tokens_per_frame=tok.cfg.tokens_per_frame,
                                     max_seq_len=1 + max_frames * tok.cfg.tokens_per_frame + 1))
    return tok, model
