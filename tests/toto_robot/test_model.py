import pytest
import torch

from toto_robot.model import MODEL_PRESETS, ModelConfig, Transformer, clip_to_sequence, model_preset

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
