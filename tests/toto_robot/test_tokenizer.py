import numpy as np
import pytest
import torch

from tests.toto_robot.helpers import moving_squares
from toto_robot.image_metrics import psnr_uint8
from toto_robot.tokenizer import (
    EMAVectorQuantizer,
    FSQuantizer,
    Tokenizer,
    TokenizerConfig,
    tokenizer_preset,
)


def _train(tok: Tokenizer, clips: np.ndarray, steps: int) -> list[dict]:
    opt = torch.optim.Adam(tok.parameters(), lr=2e-3)
    tok.train()
    hist = []
    for i in range(steps):
        batch = clips[np.random.default_rng(i).choice(len(clips), 4)]
        loss, metrics = tok(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(metrics)
    tok.eval()
    return hist


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_round_trip_improves_with_training(quantizer):
    torch.manual_seed(0)
    clips = moving_squares(8, 2, size=32, seed=1)
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=128, quantizer=quantizer, fsq_levels=(4, 4, 4, 2)))
    before = psnr_uint8(tok.reconstruct(clips).numpy(), clips)
    hist = _train(tok, clips, 50)
    after = psnr_uint8(tok.reconstruct(clips).numpy(), clips)
    assert after > before + 4.0, (before, after)
    assert hist[-1]["psnr"] > hist[0]["psnr"]
    assert 0.0 < hist[-1]["codebook_usage"] <= 1.0


def test_encode_decode_shapes_and_dtypes():
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=64)).eval()
    clips = moving_squares(2, 3)
    ids = tok.encode(clips)
    assert ids.shape == (2, 3, 8, 8) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 64
    frames = tok.decode(ids)
    assert frames.shape == (2, 3, 64, 64, 3) and frames.dtype == torch.uint8
    # float input in [0, 1] tokenizes the same as uint8
    assert torch.equal(tok.encode(torch.from_numpy(clips).float() / 255.0), ids)


def test_128px_gives_16x16_tokens():
    tok = Tokenizer(TokenizerConfig(codebook_size=8192, channels=16, embed_dim=16)).eval()
    ids = tok.encode(np.zeros((1, 1, 128, 128, 3), np.uint8))
    assert ids.shape == (1, 1, 16, 16)
    assert tok.vocab_size == 8192


@pytest.mark.parametrize("threshold, expect_many", [(0.5, True), (0.0, False)])
def test_dead_codes_are_restarted(threshold, expect_many):
    """Codes far from the data are never chosen; restarts move them onto encoder outputs."""
    torch.manual_seed(0)
    vq = EMAVectorQuantizer(16, 2, decay=0.9, commitment=0.25, dead_threshold=threshold)
    vq.codebook.copy_(100 + torch.randn(16, 2))
    vq.embed_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    vq.train()
    for _ in range(20):
        _, ids, _ = vq(torch.randn(256, 2))
    used = torch.unique(ids).numel()
    assert (used >= 8) if expect_many else (used == 1), used


def test_fsq_codes_golden_and_bijective():
    q = FSQuantizer((8, 5, 3))  # mixed-radix basis (1, 8, 40)
    golden = torch.tensor([[-1.0, -1.0, -1.0], [-0.75, -1.0, -1.0], [-1.0, -0.5, -1.0], [0.75, 1.0, 1.0]])
    assert torch.equal(q.lookup(torch.tensor([0, 1, 8, 119])), golden)
    axis = torch.linspace(-3, 3, 41)
    z = torch.cartesian_prod(axis, axis, axis)  # a grid over the latent cube
    codes, ids, _ = q(z)
    assert int(ids.min()) >= 0 and int(ids.max()) < 120
    assert torch.unique(ids).numel() == 120  # every code reachable
    assert torch.equal(q.lookup(ids), codes)  # id -> code -> id is consistent


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((2, 64, 64, 3), np.uint8), "rank 5"),
        (np.zeros((1, 2, 64, 64, 4), np.uint8), "3 channels"),
        (np.zeros((1, 2, 60, 64, 3), np.uint8), "divisible by 8"),
        (np.zeros((1, 2, 64, 64, 3), np.int32), "dtype"),
        (torch.zeros((1, 2, 64, 64, 3), dtype=torch.int64), "dtype"),
    ],
)
def test_bad_frames(frames, match):
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=64))
    with pytest.raises(ValueError, match=match):
        tok.encode(frames)


def test_frames_that_are_not_an_array():
    with pytest.raises(TypeError, match="torch.Tensor or numpy array, got list"):
        Tokenizer(tokenizer_preset("tiny", codebook_size=64)).encode([[0]])


def test_bad_ids_and_config():
    tok = Tokenizer(tokenizer_preset("tiny", codebook_size=64))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode(torch.full((1, 1, 8, 8), 64))
    with pytest.raises(ValueError, match="rank 4"):
        tok.decode(torch.zeros((8, 8), dtype=torch.long))
    with pytest.raises(ValueError, match="quantizer"):
        TokenizerConfig(quantizer="dvae")
    with pytest.raises(ValueError, match="image_size"):
        TokenizerConfig(image_size=100)
