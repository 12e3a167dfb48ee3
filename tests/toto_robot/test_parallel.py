import pytest
import torch

from toto_robot.model import Transformer, model_preset
from toto_robot.parallel import autocast, parallelize


def test_compile_switch_keeps_outputs_and_parameter_names():
    torch.manual_seed(0)
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64)).eval()
    x = torch.randint(0, 32, (2, 40))
    eager, _ = model(x)
    names = list(model.state_dict())
    # the eager backend exercises the wiring in seconds; CUDA runs use inductor
    compiled = parallelize(model, strategy="none", compile=True, compile_backend="eager")
    out, _ = compiled(x)
    assert torch.allclose(out, eager, atol=1e-5)
    assert list(compiled.state_dict()) == names


def test_bad_strategy_and_cpu_autocast():
    model = Transformer(model_preset("tiny", codebook_size=32, tokens_per_frame=16, max_seq_len=64))
    with pytest.raises(ValueError, match="expected one of"):
        parallelize(model, strategy="zero3")
    with pytest.raises(ValueError, match="torchrun"):
        parallelize(model, strategy="ddp")
    with autocast("cpu"):  # disabled on CPU: float32 stays float32
        assert model.tok_emb(torch.zeros(1, 2, dtype=torch.long)).dtype == torch.float32
