import json

import numpy as np
import pytest
import torch

from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.encoder import StreamingEncoder, TotoEncoder, save_toto, windowed_hidden_states
from toto_robot.model import clip_to_sequence

TOL = 1e-4  # float32 streaming vs full forward


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tok, model = tiny_models(max_frames=8)
    path = tmp_path_factory.mktemp("ckpt") / "toto"
    save_toto(path, tok, model)
    return path


def test_checkpoint_is_config_plus_safetensors_and_round_trips(checkpoint, tmp_path):
    files = sorted(p.name for p in checkpoint.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.safetensors"]
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["kind"] == "toto" and cfg["model"]["n_layers"] == 4
    clips = moving_squares(2, 3)
    a = TotoEncoder.from_pretrained(checkpoint)(clips)
    b = TotoEncoder.from_pretrained(checkpoint)(clips)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.features, b.features)
    # a re-save of the loaded modules gives the same outputs again (overwrite is atomic)
    tok, model = tiny_models(max_frames=8, seed=1)
    other = tmp_path / "other"
    save_toto(other, tok, model)
    assert not torch.equal(TotoEncoder.from_pretrained(other)(clips).features, a.features)
    save_toto(other, *_load(checkpoint))
    assert torch.equal(TotoEncoder.from_pretrained(other)(clips).features, a.features)
    assert not list(tmp_path.glob(".other*"))  # no temporary directories left behind


def _load(path):
    from toto_robot.encoder import load_toto

    tok, model, _ = load_toto(path)
    return tok, model


def test_encoder_outputs_frozen_middle_layer(checkpoint):
    enc = TotoEncoder.from_pretrained(checkpoint)
    assert enc.layer == 2 and len(enc.model.layers) == 2  # middle of 4 blocks; upper blocks dropped
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training and not enc.tokenizer.training
    out = enc(moving_squares(2, 3))
    assert out.tokens.shape == (2, 3, 8, 8)
    assert out.features.shape == (2, 3, 64, 64)
    assert out.pooled.shape == (2, 64)
    assert torch.allclose(out.pooled, out.features.flatten(1, 2).mean(1))
    assert not out.features.requires_grad


def test_layer_choice_changes_features(checkpoint):
    clips = moving_squares(1, 2)
    f1 = TotoEncoder.from_pretrained(checkpoint, layer=1)(clips).features
    f4 = TotoEncoder.from_pretrained(checkpoint, layer=4)(clips).features
    assert not torch.allclose(f1, f4)


def test_attentive_pooler_is_the_only_trainable_part(checkpoint):
    enc = TotoEncoder.from_pretrained(checkpoint, pooling="attentive")
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("pooler.") for n in trainable)
    out = enc(moving_squares(2, 2))
    out.pooled.sum().backward()
    assert enc.pooler.query.grad is not None and enc.pooler.query.grad.abs().sum() > 0


@pytest.mark.parametrize("window", [3, 8])
def test_streaming_equals_full_forward(checkpoint, window):
    """Golden: cached streaming == plain forward over the same frames while the window fills,
    and == the sliding-window reference at every step, also after the window has slid."""
    enc = TotoEncoder.from_pretrained(checkpoint)
    clips = torch.from_numpy(moving_squares(2, 8, seed=4))
    stream = StreamingEncoder(enc, window=window)
    steps = [stream.step(clips[:, t]) for t in range(8)]
    seq = clip_to_sequence(enc.tokenizer.encode(clips), enc.cfg, add_end=False)
    ref = windowed_hidden_states(enc.model, seq, window, enc.layer)[:, 1:].reshape(2, 8, 64, -1)
    for t, out in enumerate(steps):
        assert (out.features[:, 0] - ref[:, t]).abs().max() < TOL, t
        if t < window:
            full = enc(clips[:, : t + 1]).features[:, -1]
            assert (out.features[:, 0] - full).abs().max() < TOL, t
        assert torch.allclose(out.pooled, out.features[:, 0].mean(1))
    # the window really slides: the oldest frame's slot was overwritten, not the cache regrown
    assert stream._k[0].shape[2] == window * enc.cfg.tokens_per_frame


def test_recompute_mode_equals_full_forward_over_window(checkpoint):
    enc = TotoEncoder.from_pretrained(checkpoint)
    clips = torch.from_numpy(moving_squares(1, 6, seed=5))
    stream = StreamingEncoder(enc, window=3, mode="recompute")
    for t in range(6):
        out = stream.step(clips[:, t])
        full = enc(clips[:, max(0, t - 2): t + 1]).features[:, -1]
        assert (out.features[:, 0] - full).abs().max() < TOL


def test_streaming_reset_starts_over(checkpoint):
    enc = TotoEncoder.from_pretrained(checkpoint)
    clips = torch.from_numpy(moving_squares(1, 4, seed=6))
    stream = StreamingEncoder(enc, window=2)
    first = stream.step(clips[:, 0]).features
    stream.step(clips[:, 1])
    stream.reset()
    assert torch.equal(stream.step(clips[:, 0]).features, first)


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.zeros((1, 64, 64, 3), np.uint8), "rank 5"),
        (np.zeros((1, 2, 64, 64, 1), np.uint8), "3 channels"),
        (np.zeros((1, 2, 60, 60, 3), np.uint8), "divisible by 8"),
        (np.zeros((1, 2, 32, 32, 3), np.uint8), "64x64"),
        (np.zeros((1, 2, 64, 64, 3), np.int16), "dtype"),
        (np.zeros((1, 9, 64, 64, 3), np.uint8), "at most 8 frames"),
    ],
)
def test_encoder_bad_input(checkpoint, frames, match):
    enc = TotoEncoder.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match=match):
        enc(frames)


def test_streaming_and_loading_bad_input(checkpoint, tmp_path):
    enc = TotoEncoder.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="window"):
        StreamingEncoder(enc, window=9)
    with pytest.raises(ValueError, match="mode"):
        StreamingEncoder(enc, window=2, mode="fast")
    stream = StreamingEncoder(enc, window=2)
    with pytest.raises(ValueError, match="rank 4"):
        stream.step(np.zeros((1, 1, 64, 64, 3), np.uint8))
    stream.step(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="batch size 2"):
        stream.step(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="layer"):
        TotoEncoder.from_pretrained(checkpoint, layer=5)
    with pytest.raises(ValueError, match="pooling"):
        TotoEncoder.from_pretrained(checkpoint, pooling="max")
    with pytest.raises(FileNotFoundError, match="config.json"):
        TotoEncoder.from_pretrained(tmp_path)
