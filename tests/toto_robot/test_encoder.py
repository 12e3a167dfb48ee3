import json

import numpy as np
import pytest
import torch
from torch import nn

from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.encoder import STREAM_MODES, StreamingEncoder, TotoEncoder, save_toto
from toto_robot.model import clip_to_sequence, windowed_hidden_states

TOL = 1e-4  # float32 streaming vs full forward


@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory):
    """Queries and keys scaled up so that attention is peaked. At random init it is nearly uniform, and
    the golden test could not see a sink key left at position 0 instead of re-rotated (~1e-5 < TOL)."""
    tok, model = tiny_models(max_frames=8)
    with torch.no_grad():
        for block in model.layers:
            block.attn.wqkv.weight[: 2 * model.cfg.d_model].mul_(16)  # (q; k) rows
    path = tmp_path_factory.mktemp("sharp") / "toto"
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
    clips = moving_squares(2, 2)
    # pooled ends in a LayerNorm, so pooled.sum() is ~0 for any input and its gradient only rounding:
    # project on a fixed random direction instead
    w = torch.randn(2, enc.dim, generator=torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:
        return (enc(clips).pooled * w).sum()

    loss().backward()
    assert {n for n, p in enc.named_parameters() if p.grad is not None} == trainable
    grad = enc.pooler.query.grad.clone()
    # the gradient is the real slope: a small step along it changes the loss by step . grad
    step = 1e-2 * grad / grad.norm()
    with torch.no_grad():
        before = loss()
        enc.pooler.query.add_(step)
        change = loss() - before
    predicted = (step * grad).sum()
    assert predicted > 1e-3 and abs(change - predicted) < 0.05 * predicted, (float(change), float(predicted))


@pytest.mark.parametrize("window", [3, 8])
@pytest.mark.parametrize("ckpt", ["checkpoint", "sharp_checkpoint"])
def test_streaming_equals_full_forward(request, ckpt, window):
    """Golden: cached streaming == plain forward over the same frames while the window fills,
    and == the sliding-window reference at every step, also after the window has slid."""
    enc = TotoEncoder.from_pretrained(request.getfixturevalue(ckpt))
    clips = torch.from_numpy(moving_squares(2, 8, seed=4))
    stream = StreamingEncoder(enc, window=window)
    steps = [stream.step(clips[:, t]) for t in range(8)]
    seq = clip_to_sequence(enc.tokenizer.encode(clips), enc.cfg, add_end=False)
    ref = windowed_hidden_states(enc.model, seq, window, enc.layer)[:, 1:].reshape(2, 8, 64, -1)
    for t, out in enumerate(steps):
        assert (out.features[:, 0] - ref[:, t]).abs().max() < TOL, t
        full = enc(clips[:, : t + 1]).features[:, -1]
        if t < window:
            assert (out.features[:, 0] - full).abs().max() < TOL, t
        else:  # the window has slid: the frames that left it no longer count
            assert (out.features[:, 0] - full).abs().max() > 10 * TOL, t
        assert torch.allclose(out.pooled, out.features[:, 0].mean(1))
    # the oldest frame's slot was overwritten, not the cache regrown
    assert stream.cache.keys[0].shape[2] == window * enc.cfg.tokens_per_frame


def test_encoder_copies_what_it_keeps_and_leaves_the_given_modules_alone():
    tok, model = tiny_models(max_frames=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tok_before = {k: v.clone() for k, v in tok.state_dict().items()}
    enc = TotoEncoder(tok, model, layer=2)
    assert len(model.layers) == 4 and isinstance(model.output, nn.Linear)
    assert model(torch.zeros((1, 3), dtype=torch.long))[0].shape == (1, 3, model.cfg.vocab_size)
    assert all(p.requires_grad for p in [*model.parameters(), *tok.parameters()])  # not frozen either
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # the encoder's names are the checkpoint's (policy checkpoints and feature-cache keys rely on them)
    dropped = ("output.", "layers.2.", "layers.3.")
    state = enc.state_dict()
    assert set(state) == ({f"tokenizer.{k}" for k in tok_before}
                          | {f"model.{k}" for k in before if not k.startswith(dropped)})
    assert all(torch.equal(state[f"model.{k}"], before[k]) for k in before if not k.startswith(dropped))
    # copies: changing the encoder's weights never reaches the modules it was built from
    with torch.no_grad():
        enc.model.layers[0].ffn.w1.weight.add_(1.0)
        enc.tokenizer.encoder.net[0].weight.add_(1.0)
    assert torch.equal(model.layers[0].ffn.w1.weight, before["layers.0.ffn.w1.weight"])
    assert torch.equal(tok.encoder.net[0].weight, tok_before["encoder.net.0.weight"])


def test_all_layers_holds_each_layers_features(checkpoint):
    clips = moving_squares(2, 3)
    enc = TotoEncoder.from_pretrained(checkpoint, keep_all=True)  # reads out at layer 2, keeps all 4 blocks
    out = enc(clips, all_layers=True)
    assert out.layers.shape == (5, 2, 3, 64, 64) and out.layers.dtype == torch.float32
    plain = enc(clips)
    assert plain.layers is None and torch.equal(out.features, plain.features) and torch.equal(out.pooled, plain.pooled)
    assert torch.equal(out.layers[enc.layer], out.features)
    seq = clip_to_sequence(out.tokens, enc.cfg, add_end=False)
    torch.testing.assert_close(out.layers[0], enc.model.tok_emb(seq)[:, 1:].reshape(2, 3, 64, 64), atol=0, rtol=0)
    for k in range(1, 5):
        at_k = TotoEncoder.from_pretrained(checkpoint, layer=k)(clips).features
        torch.testing.assert_close(out.layers[k], at_k, atol=1e-6, rtol=0)
    # by default only the blocks up to the read-out layer are kept, and all_layers reaches that deep
    assert TotoEncoder.from_pretrained(checkpoint, layer=3)(clips, all_layers=True).layers.shape[0] == 4


@pytest.mark.parametrize("mode", STREAM_MODES)
def test_streaming_all_layers_equals_streaming_at_each_layer(checkpoint, mode):
    clips = torch.from_numpy(moving_squares(2, 5, seed=3))
    stream = StreamingEncoder(TotoEncoder.from_pretrained(checkpoint, keep_all=True), window=3, mode=mode)
    at_k = [StreamingEncoder(TotoEncoder.from_pretrained(checkpoint, layer=k), window=3, mode=mode)
            for k in range(1, 5)]
    for t in range(5):  # the window slides after 3 frames
        out = stream.step(clips[:, t], all_layers=True)
        assert out.layers.shape == (5, 2, 1, 64, 64) and torch.equal(out.layers[2], out.features)
        for k, other in enumerate(at_k, start=1):
            assert (out.layers[k] - other.step(clips[:, t]).features).abs().max() < TOL, (t, k)


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
    with pytest.raises(ValueError, match=r"layer: expected 1\.\.4 \(blocks of the transformer\), got 5"):
        TotoEncoder.from_pretrained(checkpoint, layer=5)
    deep = StreamingEncoder(TotoEncoder.from_pretrained(checkpoint, keep_all=True), window=2)
    deep.step(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="all_layers: expected False as at the first step since reset"):
        deep.step(np.zeros((1, 64, 64, 3), np.uint8), all_layers=True)
    deep.reset()
    assert deep.step(np.zeros((1, 64, 64, 3), np.uint8), all_layers=True).layers.shape[0] == 5
    with pytest.raises(ValueError, match="pooling"):
        TotoEncoder.from_pretrained(checkpoint, pooling="max")
    with pytest.raises(FileNotFoundError, match="config.json"):
        TotoEncoder.from_pretrained(tmp_path)
