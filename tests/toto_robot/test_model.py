import pytest
import torch

from toto_robot.model import (
    MODEL_PRESETS,
    ModelConfig,
    SinkWindowCache,
    Transformer,
    clip_to_sequence,
    model_preset,
    windowed_hidden_states,
)

PAPER_SIZES = {"base": 120e6, "large": 280e6, "1b": 1.1e9}


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_presets_match_parameter_counts(name):
    with torch.device("meta"):
        model = Transformer(model_preset(name, codebook_size=8192))
    n = model.num_params()
    assert abs(n / PAPER_SIZES[name] - 1) < 0.10, f"{name}: {n / 1e6:.1f}M"
    cfg = model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == {
        "base": (12, 768, 12), "large": (16, 1024, 16), "1b": (22, 2048, 16)}[name]
    assert cfg.vocab_size == 8192 + 3


def test_flops_per_token_formula():
    model = Transformer(model_preset("tiny", codebook_size=64, tokens_per_frame=16, max_seq_len=130))
    f = model.flops_per_token(seq_len=100)
    n = sum(p.numel() for p in model.parameters()) - model.tok_emb.weight.numel()
    assert f["forward"] == 2 * n + 4 * 4 * 100 * 64
    assert f["train"] == 3 * f["forward"]
    assert set(MODEL_PRESETS) >= {"tiny", "small", "base", "large", "1b"}


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=1 + 4 * 16 + 1)
    model = Transformer(cfg)
    ids = torch.randint(0, 32, (4, 4, 4, 4))
    seq = clip_to_sequence(ids, cfg)  # (4, 66)
    assert seq.shape == (4, 66) and int(seq[0, 0]) == cfg.special_id("video_start")
    assert int(seq[0, -1]) == cfg.special_id("end")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    first = None
    for _ in range(150):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0  # about ln(35) at init
    assert loss.item() < 0.3, loss.item()


def test_causality():
    """Changing a later token never changes earlier logits."""
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64)).eval()
    a = torch.randint(0, 32, (1, 40))
    b = a.clone()
    b[0, 30] = (b[0, 30] + 1) % 32
    la, _ = model(a)
    lb, _ = model(b)
    assert torch.allclose(la[0, :30], lb[0, :30], atol=1e-6)
    assert not torch.allclose(la[0, 30:], lb[0, 30:], atol=1e-6)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="d_model"):
        ModelConfig(d_model=100, n_heads=12)
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig(n_layers=0)
    with pytest.raises(ValueError, match="preset"):
        model_preset("huge")
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros((1, 65), dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros((1, 8)))


def test_rope_base_change_changes_outputs():
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64)).eval()
    x = torch.randint(0, 32, (1, 50))
    before, _ = model(x)
    model.set_rope_base(50_000.0)
    after, _ = model(x)
    assert model.cfg.rope_base == 50_000.0
    assert not torch.allclose(before, after)


def _peaked_model(max_seq_len: int) -> Transformer:
    """A tiny model whose attention is peaked (queries and keys scaled up), so that which keys a token
    sees, and at which positions, changes its output well above float32 rounding."""
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=max_seq_len)).eval()
    with torch.no_grad():
        for block in model.layers:
            block.attn.wqkv.weight[: 2 * model.cfg.d_model].mul_(16)  # (q; k) rows
    return model


@torch.no_grad()
def test_sink_window_cache_is_the_causal_forward_then_the_windowed_reference():
    model = _peaked_model(max_seq_len=1 + 3 * 16)
    seq = clip_to_sequence(torch.randint(0, 32, (2, 6, 4, 4)), model.cfg, add_end=False)  # (2, 1 + 6*16)
    ref = windowed_hidden_states(model, seq, window=3, n_layers=4)
    cache = SinkWindowCache(model.cfg, window=3)
    assert model.hidden_states(seq[:, :1], cache=cache).shape == (2, 1, 64)  # the start token: the sink
    for f in range(6):  # 6 frames: twice the context the model was built for
        frame = seq[:, 1 + f * 16: 1 + (f + 1) * 16]
        states = model.hidden_states(frame, cache=cache, all_layers=True)  # (5, 2, 16, 64)
        assert states.shape == (5, 2, 16, 64) and cache.frames == f + 1
        torch.testing.assert_close(states[-1], ref[:, 1 + f * 16: 1 + (f + 1) * 16], atol=1e-5, rtol=0)
        if f < 3:  # the window is filling: exactly the plain causal forward
            full = model.hidden_states(seq[:, : 1 + (f + 1) * 16], all_layers=True)[:, :, -16:]
            torch.testing.assert_close(states, full, atol=1e-5, rtol=0)
        assert cache.keys[0].shape == (2, 4, 3 * 16, 16)  # a ring buffer, never regrown


def test_sink_window_cache_and_hidden_states_errors():
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64)).eval()
    ids = torch.zeros((2, 16), dtype=torch.long)
    cache = SinkWindowCache(model.cfg, window=2)
    with pytest.raises(ValueError, match=r"cache: expected the start token alone first \(1 token\), got 16 tokens"):
        model.hidden_states(ids, cache=cache)
    model.hidden_states(ids[:, :1], n_layers=2, cache=cache)
    with pytest.raises(ValueError, match="cache: expected one frame of 16 tokens per call, got 3"):
        model.hidden_states(ids[:, :3], n_layers=2, cache=cache)
    with pytest.raises(ValueError, match=r"n_layers: expected 2 \(the layers the cache was started with\), got 4"):
        model.hidden_states(ids, cache=cache)
    with pytest.raises(ValueError, match=r"cache: expected batch size 2 \(as when it was started\), got 1"):
        model.hidden_states(ids[:1], n_layers=2, cache=cache)
    assert cache.frames == 0  # a refused call changes nothing
    with pytest.raises(ValueError, match=r"n_layers: expected 0\.\.4 \(blocks of this model\), got 5"):
        model.hidden_states(ids, n_layers=5)
    with pytest.raises(ValueError, match="window: expected a positive number of frames, got 0"):
        SinkWindowCache(model.cfg, window=0)


def test_trunk_copies_the_first_blocks_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64)).eval()
    x = torch.randint(0, 32, (1, 40))
    trunk = model.trunk(2)
    assert len(trunk.layers) == 2 and trunk.output is None and len(model.layers) == 4 and model.output is not None
    assert set(trunk.state_dict()) == {k for k in model.state_dict() if not k.startswith(("output.", "layers.2.",
                                                                                          "layers.3."))}
    assert torch.equal(trunk.hidden_states(x), model.hidden_states(x, n_layers=2))
    with torch.no_grad():
        trunk.layers[0].attn.wqkv.weight.zero_()
    assert model.layers[0].attn.wqkv.weight.abs().sum() > 1  # a copy, not a view
    with pytest.raises(ValueError, match="forward: expected a Transformer with its LM head, got a trunk"):
        trunk(x)
    with pytest.raises(ValueError, match=r"n_blocks: expected 1\.\.4 \(blocks of the transformer\), got 0"):
        model.trunk(0)
