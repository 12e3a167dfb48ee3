import json
import math

import numpy as np
import pytest
import torch

from pretrain.shards import TokenShards
from pretrain.trainer import Batches, TrainConfig, build_optimizer, pretrain
from tests.pretrain.helpers import SIZE, make_shards
from toto_robot.encoder import load_toto
from toto_robot.model import Transformer, model_preset

MODEL = {"preset": "tiny", "d_model": 32, "n_heads": 2, "n_layers": 2, "ffn_hidden": 64}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    return tmp, make_shards(tmp)


def _cfg(**kw) -> TrainConfig:
    base = {"steps": 40, "batch_size": 4, "lr": 3e-3, "warmup_steps": 4, "eval_every": 20, "ckpt_every": 20,
            "log_every": 20, "peak_tflops": 1.0, "progress": False, "tensorboard": False, "held_out": 0.25}
    return TrainConfig(**{**base, **kw})


def test_weight_decay_on_matrices_only_and_beta2():
    model = Transformer(model_preset("tiny", codebook_size=16, tokens_per_frame=4, max_seq_len=10))
    opt = build_optimizer(model, _cfg(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.95)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_batches_are_a_function_of_step_micro_and_rank(shards):
    _, path = shards
    s = TokenShards(path, held_out=0.25)
    mcfg = model_preset("tiny", codebook_size=64, tokens_per_frame=16, max_seq_len=66)
    b = Batches(s, {}, mcfg, seed=0)
    x1, y1 = b.batch(3, 0, 0, 4)
    x2, _ = b.batch(3, 0, 0, 4)
    x3, _ = b.batch(3, 0, 1, 4)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert x1.shape == (4, 65) and torch.equal(x1[:, 1:], y1[:, :-1])
    assert (x1[:, 0] == mcfg.special_id("video_start")).all() and (y1[:, -1] == mcfg.special_id("end")).all()
    with pytest.raises(ValueError, match="missing \\['videos'\\]"):
        Batches(s, {"kinetics": 1.0}, mcfg, seed=0)


def _losses(run_dir) -> list[float]:
    return [json.loads(r)["loss"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, pretrain(shards[1], MODEL, _cfg(), run)


def test_loss_decreases_and_checkpoint_is_a_toto_checkpoint(shards, trained):
    _, path = shards
    run, res = trained
    losses = _losses(run)
    assert len(losses) == 40 and losses[0] > math.log(64) - 0.5  # starts near uniform over the codebook
    assert np.mean(losses[-5:]) < losses[0] - 0.6, losses
    assert res["held_out_loss"] < losses[0] - 0.6
    assert 0 < res["mfu"] < 1 and res["tokens_per_s"] > 0
    _tok, model, config = load_toto(res["checkpoint"])
    assert config["train"]["step"] == 40 and model.cfg.tokens_per_frame == (SIZE // 8) ** 2
    again = pretrain(path, MODEL, _cfg(), run)  # finished: resumes at the end, trains nothing
    assert again["held_out_loss"] == pytest.approx(res["held_out_loss"], abs=1e-6)


def test_resolution_finetune_with_a_new_rope_base(shards, trained, tmp_path):
    tmp, _path = shards
    first = trained[1]
    big = make_shards(tmp, size=2 * SIZE)  # same tokenizer, 2x the resolution: 4x the tokens per frame
    res = pretrain(big, {"preset": "small"}, _cfg(steps=3, init_from=first["checkpoint"], rope_base=50_000.0),
                   tmp_path / "r64")
    _, model, _ = load_toto(res["checkpoint"])
    assert model.cfg.rope_base == 50_000.0 and model.cfg.tokens_per_frame == 4 * (SIZE // 8) ** 2
    assert model.cfg.d_model == MODEL["d_model"]  # the architecture comes from init_from, not the preset
    # Started from the trained weights: the first step is far below a fresh model's ~ln(64).
    assert _losses(tmp_path / "r64")[0] < math.log(64) - 0.4
    assert math.isfinite(res["held_out_loss"])
    with pytest.raises(ValueError, match="expected kind 'toto', found 'tokenizer'"):
        pretrain(big, MODEL, _cfg(steps=1, init_from=str(tmp / "tokenizer")), tmp_path / "bad")
