"""The checkpoint kinds: each round-trips, and a wrong kind, another version or a missing config are refused."""

import json
import re
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from tests.toto_robot.helpers import tiny_models
from toto_robot.checkpoint import (
    BC_POLICY,
    CHECKPOINT_VERSION,
    KINDS,
    TOKENIZER,
    TOTO,
    TrainState,
    load_state_dict,
    load_tokenizer,
    load_toto,
    load_train_state,
    read_checkpoint,
    save_checkpoint,
    save_tokenizer,
    save_toto,
    save_train_state,
)


def _config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_every_kind_is_named_once():
    assert KINDS == (TOKENIZER, TOTO, BC_POLICY) == ("tokenizer", "toto", "toto-bc-policy")


def test_tokenizer_round_trips(tmp_path):
    tok, _ = tiny_models()
    save_tokenizer(tmp_path / "tok", tok, extra={"steps": 3})
    config = _config(tmp_path / "tok")
    assert config["kind"] == TOKENIZER and config["version"] == CHECKPOINT_VERSION and config["steps"] == 3
    assert config["files"] == ["tokenizer.safetensors"]
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.cfg == tok.cfg and not loaded.training
    _assert_same_tensors(loaded.state_dict(), tok.state_dict())


def test_toto_round_trips_and_holds_a_tokenizer(tmp_path):
    tok, model = tiny_models()
    save_toto(tmp_path / "toto", tok, model, extra={"corpus": "squares"})
    tok2, model2, config = load_toto(tmp_path / "toto")
    assert config["kind"] == TOTO and config["version"] == CHECKPOINT_VERSION and config["corpus"] == "squares"
    assert model2.cfg == model.cfg and tok2.cfg == tok.cfg
    _assert_same_tensors(model2.state_dict(), model.state_dict())
    _assert_same_tensors(tok2.state_dict(), tok.state_dict())
    _assert_same_tensors(load_tokenizer(tmp_path / "toto").state_dict(), tok.state_dict())


def test_a_bc_policy_checkpoint_round_trips(tmp_path):
    """The generic pair BCPolicy.save/load goes through (tests/policies/test_bc.py covers the policy itself)."""
    weights = {"head.weight": torch.randn(3, 4), "head.bias": torch.zeros(3)}
    save_checkpoint(tmp_path / "p", BC_POLICY, {"policy": {"head": "mlp"}, "step": 7}, {"policy": weights})
    config = read_checkpoint(tmp_path / "p", BC_POLICY)
    assert config["policy"] == {"head": "mlp"} and config["step"] == 7 and config["version"] == CHECKPOINT_VERSION
    _assert_same_tensors(load_state_dict(tmp_path / "p", "policy"), weights)


def _train_state(model, step: int = 5) -> TrainState:
    names = [n for n, _ in model.named_parameters()]
    optimizer = {"state": {n: {"step": torch.tensor(float(step)), "exp_avg": torch.randn_like(p),
                               "exp_avg_sq": torch.rand_like(p)} for n, p in model.named_parameters()},
                 "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "params": names}]}
    rng = [[torch.get_rng_state()], [torch.Generator().manual_seed(1).get_state()]]  # two ranks
    return TrainState(step=step, model=model.state_dict(), optimizer=optimizer,
                      scheduler={"last_epoch": step, "base_lrs": [1e-3]}, rng=rng, seed=3, world_size=2,
                      run={"shards": "/data/tokens.zarr"})


def test_train_state_round_trips_inside_a_toto_checkpoint(tmp_path):
    tok, model = tiny_models()
    state = _train_state(model)
    save_train_state(tmp_path / "ckpt", state, tok, model.cfg)
    back = load_train_state(tmp_path / "ckpt")
    assert (back.step, back.seed, back.world_size, back.scheduler, back.run) == (5, 3, 2, state.scheduler, state.run)
    _assert_same_tensors(back.model, state.model)
    assert back.optimizer["param_groups"] == state.optimizer["param_groups"]  # betas a tuple again
    assert sorted(back.optimizer["state"]) == sorted(state.optimizer["state"])
    for name, st in state.optimizer["state"].items():
        _assert_same_tensors(back.optimizer["state"][name], st)
    assert [len(r) for r in back.rng] == [1, 1] and all(torch.equal(a[0], b[0]) for a, b in zip(back.rng, state.rng))
    # The same directory is a Toto checkpoint for every reader of an encoder.
    _, model2, config = load_toto(tmp_path / "ckpt")
    _assert_same_tensors(model2.state_dict(), model.state_dict())
    assert config["train"]["data_position"] == {"step": 5, "seed": 3, "world_size": 2}
    save_toto(tmp_path / "plain", tok, model)
    with pytest.raises(ValueError, match="expected a train state"):
        load_train_state(tmp_path / "plain")


def test_a_wrong_kind_is_refused_in_one_line(tmp_path):
    tok, _ = tiny_models()
    save_tokenizer(tmp_path / "tok", tok)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {tmp_path / 'tok'}: expected kind 'toto', "
                                                   "found 'tokenizer'")):
        load_toto(tmp_path / "tok")
    save_checkpoint(tmp_path / "p", BC_POLICY, {}, {"policy": {"w": torch.zeros(1)}})
    with pytest.raises(ValueError, match="expected kind 'tokenizer' or 'toto', found 'toto-bc-policy'"):
        load_tokenizer(tmp_path / "p")
    with pytest.raises(ValueError, match="checkpoint kind: expected one of"):
        save_checkpoint(tmp_path / "x", "toto-policy", {}, {})
    with pytest.raises(ValueError, match=re.escape("keys ['kind'] are written by save_checkpoint")):
        save_checkpoint(tmp_path / "x", TOTO, {"kind": TOTO}, {})


@pytest.mark.parametrize("version", [CHECKPOINT_VERSION + 1, CHECKPOINT_VERSION - 1])
def test_another_version_is_refused(tmp_path, version):
    tok, model = tiny_models()
    path = save_toto(tmp_path / "toto", tok, model)
    (path / "config.json").write_text(json.dumps({**_config(path), "version": version}))
    message = f"checkpoint {path} was saved by checkpoint version {version}; this code reads version {CHECKPOINT_VERSION}"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_toto(path)


def test_a_missing_config_names_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "absent"):
        with pytest.raises(FileNotFoundError, match=re.escape(str(path / "config.json"))):
            load_toto(path)


def test_an_old_checkpoint_without_a_version_reads_as_version_1(tmp_path):
    """The layout written before the version field existed, by hand: a trainer's Toto checkpoint."""
    assert CHECKPOINT_VERSION == 1  # a new version must say here how (or whether) version 1 still loads
    tok, model = tiny_models()
    old = tmp_path / "old"
    old.mkdir()
    state = _train_state(model)
    train = {"step": 5, "data_position": {"step": 5, "seed": 3, "world_size": 2}, "scheduler": state.scheduler,
             "optimizer_param_groups": [{**state.optimizer["param_groups"][0], "betas": [0.9, 0.95]}],
             "config": {"steps": 40}, "shards": "/data/tokens.zarr", "train_flops_per_token": 1e6}
    config = {"kind": "toto", "tokenizer": asdict(tok.cfg), "model": model.cfg.to_dict(), "train": train,
              "files": ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "tokenizer.safetensors"]}
    (old / "config.json").write_text(json.dumps(config))
    for name, sd in (("tokenizer", tok.state_dict()), ("model", model.state_dict())):
        save_file({k: v.contiguous().clone() for k, v in sd.items()}, old / f"{name}.safetensors")
    save_file({f"{n}::{k}": v for n, st in state.optimizer["state"].items() for k, v in st.items()},
              old / "optimizer.safetensors")
    save_file({"rank0.0": state.rng[0][0], "rank1.0": state.rng[1][0]}, old / "rng.safetensors")

    _, model2, _ = load_toto(old)
    _assert_same_tensors(model2.state_dict(), model.state_dict())
    _assert_same_tensors(load_tokenizer(old).state_dict(), tok.state_dict())
    back = load_train_state(old)
    assert back.step == 5 and back.world_size == 2 and back.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert back.run == {"config": {"steps": 40}, "shards": "/data/tokens.zarr", "train_flops_per_token": 1e6}
    _assert_same_tensors(back.optimizer["state"]["tok_emb.weight"], state.optimizer["state"]["tok_emb.weight"])
