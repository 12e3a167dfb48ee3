"""CUDA checks (marker `gpu`, skipped by CI's marker filter; run by bench/gpu_check.sh when a GPU is lent):
forward / backward in bf16 against float32, the compile path, and the streaming encoder on CUDA."""

import pytest
import torch

from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.fast import FastTokenizer, token_agreement
from toto_robot.model import Transformer, model_preset
from toto_robot.parallel import autocast

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def _batch(model, b=2, t=65):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, model.cfg.codebook_size, (b, t), generator=g)
    return idx.to(CUDA), torch.roll(idx, -1, 1).to(CUDA)


def test_bf16_forward_backward_matches_fp32():
    torch.manual_seed(0)
    model = Transformer(model_preset("small", codebook_size=512, tokens_per_frame=64, max_seq_len=130)).to(CUDA)
    idx, targets = _batch(model)
    _, loss32 = model(idx, targets)
    loss32.backward()
    grads32 = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with autocast(CUDA):
        _, loss16 = model(idx, targets)
    loss16.backward()
    assert abs(loss16.item() - loss32.item()) <= 2e-2 * loss32.item()
    for g16, g32, (name, _) in zip((p.grad for p in model.parameters()), grads32, model.named_parameters()):
        cos = torch.nn.functional.cosine_similarity(g16.float().flatten(), g32.flatten(), dim=0)
        assert cos >= 0.98, f"{name}: gradient cosine {cos:.3f} between bf16 and fp32"


def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=512, tokens_per_frame=64, max_seq_len=130)).to(CUDA)
    idx, targets = _batch(model)
    _, want = model(idx, targets)
    _, got = torch.compile(model)(idx, targets)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_streaming_encoder_on_cuda_matches_cpu():
    tok, model = tiny_models(max_frames=6)
    cpu = TotoEncoder(tok, model)
    gpu = TotoEncoder(tok, model).to(CUDA)
    frames = torch.from_numpy(moving_squares(2, 8, size=64, seed=3))
    ref, s_gpu = StreamingEncoder(cpu, window=4), StreamingEncoder(gpu, window=4)
    fast = StreamingEncoder(gpu, window=4, tokenizer_backend="bf16", step_backend="static")
    for t in range(frames.shape[1]):
        want, got, quick = ref.step(frames[:, t]), s_gpu.step(frames[:, t]), fast.step(frames[:, t])
        assert token_agreement(got.tokens.cpu(), want.tokens) >= 0.95  # CUDA convolutions round differently
        assert token_agreement(quick.tokens.cpu(), want.tokens) >= 0.85
        assert got.features.device.type == "cuda" and torch.isfinite(got.features).all()


def test_compile_backends_on_cuda():
    tok, model = tiny_models(max_frames=6)
    enc = TotoEncoder(tok, model).to(CUDA)
    frames = torch.from_numpy(moving_squares(1, 6, size=64, seed=3))
    eager = StreamingEncoder(enc, window=4)
    compiled = StreamingEncoder(enc, window=4, tokenizer_backend="compile", step_backend="compile")
    assert compiled.tokenizer.backend == "compile"
    for t in range(frames.shape[1]):
        a, b = eager.step(frames[:, t]), compiled.step(frames[:, t])
        assert token_agreement(b.tokens, a.tokens) >= 0.99
        assert (b.features - a.features).abs().max() <= 5e-2
    assert FastTokenizer(enc.tokenizer, "onnx").backend == "eager"  # onnx is a CPU backend: falls back
