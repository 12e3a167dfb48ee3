"""Export of the encoder and a policy head: torch.export, the torch.jit.trace fallback, equivalence checks."""

import warnings

import pytest
import torch
from torch import nn

from policies.reference import ChunkHead
from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.encoder import TotoEncoder
from toto_robot.export import EXPORT, TRACE, export_encoder, export_module, load_exported


def test_exported_encoder_matches_the_frozen_encoder(tmp_path):
    tok, model = tiny_models(max_frames=4)
    encoder = TotoEncoder(tok, model)
    frames = torch.from_numpy(moving_squares(2, 2, size=64))  # two cameras, two frames
    other = torch.from_numpy(moving_squares(2, 2, size=64, seed=7))
    result = export_encoder(encoder, frames, tmp_path / "encoder", check_frames=[other])
    assert result.method == EXPORT and result.path.suffix == ".pt2" and result.fallback_reason is None
    assert result.max_abs_diff <= 1e-4
    features, pooled = load_exported(result.path)(other)
    want = encoder(other)
    torch.testing.assert_close(features, want.features, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, want.pooled, atol=1e-4, rtol=0)


def test_exported_head_matches(tmp_path):
    torch.manual_seed(0)
    head = ChunkHead(in_dim=73, hidden=32, horizon=8, action_dim=7)
    x = torch.randn(1, 73)
    result = export_module(head, (x,), tmp_path / "head", check_inputs=[(torch.randn(1, 73),)])
    assert result.method == EXPORT and result.max_abs_diff <= 1e-6
    assert load_exported(result.path)(x).shape == (1, 8, 7)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it, tracing records one branch."""

    def forward(self, x):
        if float(x.sum()) > 0:
            return x * 2
        return x * 3


def test_falls_back_to_tracing_and_says_why(tmp_path):
    x = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about the Python float()
        result = export_module(DataDependent(), (x,), tmp_path / "dd", check_inputs=[(torch.full((3,), 2.0),)])
    assert result.method == TRACE and result.path.suffix == ".pt"
    assert result.fallback_reason and result.max_abs_diff == 0.0


def test_equivalence_check_fails_when_outputs_differ(tmp_path):
    """The traced program took one branch; an input that takes the other one is caught."""
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"differs from the module by up to 1 \(allowed 1e-05\)"):
        warnings.simplefilter("ignore")
        export_module(DataDependent(), (torch.ones(3),), tmp_path / "dd", check_inputs=[(-torch.ones(3),)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="method: expected None, 'torch.export' or 'torch.jit.trace', got 'onnx'"):
        export_module(nn.Identity(), (torch.ones(1),), "x", method="onnx")
    with pytest.raises(TypeError, match="example_inputs: expected a tuple of tensors, got Tensor"):
        export_module(nn.Identity(), torch.ones(1), "x")
