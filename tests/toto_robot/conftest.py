import pytest

from tests.toto_robot.helpers import tiny_models
from toto_robot.encoder import save_toto


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Toto checkpoint (tokenizer + transformer as initialized)."""
    tok, model = tiny_models(max_frames=8)
    path = tmp_path_factory.mktemp("ckpt") / "toto"
    save_toto(path, tok, model)
    return path
