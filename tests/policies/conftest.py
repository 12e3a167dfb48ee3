import pytest
import torch

from tests.toto_robot.helpers import tiny_models
from toto_robot.encoder import save_toto


@pytest.fixture(scope="module")
def encoder_ckpt(tmp_path_factory):
    """A tiny Toto checkpoint whose weights no fresh initialization reproduces (a stand-in for pretraining)."""
    tok, model = tiny_models(max_frames=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("enc") / "toto"
    save_toto(path, tok, model)
    return path
