"""The fast path against eager: tokenizer backends (tokens and features), the static cache and bf16 step, the
fallback when a backend cannot run, and the BC policy's config keys reaching its streaming encoder."""

import builtins
import logging
from dataclasses import asdict

import numpy as np
import pytest
import torch

from policies.bc import BCPolicy, PolicyConfig
from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.fast import FastTokenizer, token_agreement

# Measured on the tiny and small presets (random weights, bench/bench_deploy.py): onnx agrees on every token,
# bf16 on ~95-96%; a trained tokenizer's codes are farther apart, so these are lower bounds in spirit.
BF16_MIN_AGREEMENT = 0.85
STATIC_ATOL = 1e-5  # the static cache: the same attention, summed in another order
BF16_STEP_ATOL = 2e-2  # bf16 autocast of the transformer step, tiny preset


@pytest.fixture(scope="module")
def encoder():
    tok, model = tiny_models(max_frames=6)
    return TotoEncoder(tok, model)


@pytest.fixture(scope="module")
def frames():
    return torch.from_numpy(moving_squares(2, 8, size=64, seed=3))  # two cameras, eight frames


def stream_features(stream, frames):
    stream.reset()
    outs = [stream.step(frames[:, t]) for t in range(frames.shape[1])]
    return torch.cat([o.tokens for o in outs], 1), torch.cat([o.features for o in outs], 1)


def test_onnx_tokens_equal_eager(encoder, frames):
    pytest.importorskip("onnx", reason="the onnx backend exports through the onnx package")
    fast = FastTokenizer(encoder.tokenizer, "onnx")
    assert fast.backend == "onnx", fast.fallback_reason
    want = encoder.tokenizer.encode(frames)
    assert torch.equal(fast.encode(frames), want)
    assert torch.equal(fast.encode(frames[:, :1]), want[:, :1])  # a second shape: a second session
    assert fast.warmup_s > 0


def test_bf16_tokens_agree_and_are_reported(encoder, frames):
    fast = FastTokenizer(encoder.tokenizer, "bf16")
    if fast.backend != "bf16":
        pytest.skip(f"bf16 unavailable here: {fast.fallback_reason}")
    agreement = token_agreement(fast.encode(frames), encoder.tokenizer.encode(frames))
    assert BF16_MIN_AGREEMENT <= agreement <= 1.0


def test_missing_onnxruntime_falls_back_to_eager_with_one_warning(encoder, frames, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_ort(name, *args, **kw):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with caplog.at_level(logging.WARNING, logger="toto_robot.fast"):
        fast = FastTokenizer(encoder.tokenizer, "onnx")
    assert fast.backend == "eager" and "onnxruntime is not installed" in fast.fallback_reason
    assert len(caplog.records) == 1 and "using eager" in caplog.text
    assert torch.equal(fast.encode(frames), encoder.tokenizer.encode(frames))


def test_failed_export_falls_back_to_eager(encoder, frames, monkeypatch):
    pytest.importorskip("onnx")
    fast = FastTokenizer(encoder.tokenizer, "onnx")
    monkeypatch.setattr(fast, "_onnx_session", lambda x: (_ for _ in ()).throw(RuntimeError("unsupported op")))
    assert torch.equal(fast.encode(frames), encoder.tokenizer.encode(frames))
    assert fast.backend == "eager" and fast.fallback_reason == "RuntimeError: unsupported op"


def test_static_cache_and_onnx_tokenizer_stream_like_eager(encoder, frames):
    """Past the window (4 of 8 frames): the ring buffer wraps, the mask's slots move."""
    want_ids, want = stream_features(StreamingEncoder(encoder, window=4), frames)
    backend = "onnx" if FastTokenizer(encoder.tokenizer, "onnx").backend == "onnx" else "eager"
    fast = StreamingEncoder(encoder, window=4, tokenizer_backend=backend, step_backend="static")
    for _ in range(2):  # and again after reset
        ids, got = stream_features(fast, frames)
        assert torch.equal(ids, want_ids)
        assert (got - want).abs().max() <= STATIC_ATOL


def test_bf16_step_within_tolerance(encoder, frames):
    _, want = stream_features(StreamingEncoder(encoder, window=4), frames)
    _, got = stream_features(StreamingEncoder(encoder, window=4, step_backend="bf16"), frames)
    diff = float((got - want).abs().max())
    assert 0 < diff <= BF16_STEP_ATOL  # lossy, and bounded


def test_bad_backends(encoder):
    with pytest.raises(ValueError, match="tokenizer_backend: expected one of"):
        StreamingEncoder(encoder, window=4, tokenizer_backend="tensorrt")
    with pytest.raises(ValueError, match="step_backend: mode 'recompute' has no cache"):
        StreamingEncoder(encoder, window=4, mode="recompute", step_backend="static")
    with pytest.raises(ValueError, match="PolicyConfig.step_backend: expected one of"):
        _policy_config(encoder, step_backend="fast")


def _policy_config(encoder, **kw):
    return PolicyConfig(tokenizer_config=asdict(encoder.tokenizer.cfg), model_config=encoder.cfg.to_dict(),
                        image_size=64, encoder_window=4, **kw)


def test_bc_policy_acts_on_the_fast_path_like_eager(encoder, frames):
    cfg = _policy_config(encoder)
    obs = [{**{c: frames[i, t].numpy() for i, c in enumerate(cfg.cameras)},
            **{k: np.full(d, 0.1 * t, np.float32) for k, d in zip(cfg.proprio_keys, cfg.proprio_dims)}}
           for t in range(6)]
    eager = BCPolicy(cfg, encoder=encoder).eval()
    fast = BCPolicy(_policy_config(encoder, tokenizer_backend="bf16", step_backend="static"), encoder=encoder).eval()
    fast.load_state_dict(eager.state_dict())
    eager.reset(), fast.reset()
    want = np.stack([eager.predict_action_chunk(o) for o in obs])
    got = np.stack([fast.predict_action_chunk(o) for o in obs])
    assert fast._stream.step_backend == "static" and fast._stream.tokenizer.requested == "bf16"
    assert np.abs(got - want).max() <= 0.5  # bf16 tokens may flip; the actions stay in range and close


@pytest.mark.slow  # torch.compile on CPU: about a minute of warm-up
def test_compile_backends_equal_eager(encoder, frames):
    want_ids, want = stream_features(StreamingEncoder(encoder, window=4), frames)
    ids, got = stream_features(StreamingEncoder(encoder, window=4, tokenizer_backend="compile",
                                                step_backend="compile"), frames)
    assert torch.equal(ids, want_ids) and (got - want).abs().max() <= STATIC_ATOL
