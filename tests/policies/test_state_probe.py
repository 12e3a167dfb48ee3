import numpy as np
import pytest

from policies.state_probe import ProbeConfig, run_probe
from tests.toto_robot.helpers import tiny_models
from toto_robot.encoder import TotoEncoder
from toto_robot.store import TrajectoryStore


def square_store(path, n_episodes=10, steps=24, seed=0):
    """A bright square at a random place in each frame: `object_pos` is its centre, `robot0_eef_pos` is noise
    that no image holds."""
    rng = np.random.default_rng(seed)
    schema = {"agentview_image": ((64, 64, 3), "uint8"), "object_pos": ((3,), "float32"),
              "robot0_eef_pos": ((3,), "float32")}
    store = TrajectoryStore.create(path, schema, {})
    for e in range(n_episodes):
        frames = np.zeros((steps, 64, 64, 3), np.uint8)
        pos = rng.integers(0, 48, size=(steps, 2))
        for t, (y, x) in enumerate(pos):
            frames[t, y:y + 16, x:x + 16] = 255
        obj = np.concatenate([pos / 48.0, np.zeros((steps, 1))], 1).astype(np.float32)
        obj[:, 2] = rng.normal(size=steps)  # a coordinate the frames do not show either
        store.add_episode({"agentview_image": frames, "object_pos": obj,
                           "robot0_eef_pos": rng.normal(size=(steps, 3)).astype(np.float32)},
                          {"task": "squares", "seed": e, "success": True, "source": "test"})
    return path


@pytest.fixture(scope="module")
def probe_result(tmp_path_factory):
    path = square_store(tmp_path_factory.mktemp("probe") / "squares.zarr")
    tok, model = tiny_models()
    encoder = TotoEncoder(tok, model, keep_all=True)
    cfg = ProbeConfig(window=2, stride=1, val_ratio=0.3, readouts=("mean", "flat", "attentive_pos"), train_steps=150)
    return run_probe(encoder, path, cfg, progress=False)


def test_probe_recovers_a_known_position_and_not_noise(probe_result):
    r2 = probe_result["r2"]
    assert probe_result["layers"] == [0, 1, 2, 3, 4]
    for readout in ("flat", "attentive_pos"):
        assert len(r2[readout]["object_pos"]) == 5
        # the square's (x, y) is in the frames: 2 of the 3 coordinates -> R² near 2/3; the gripper is noise
        assert max(r2[readout]["object_pos"]) > 0.45, r2[readout]
        assert max(r2[readout]["robot0_eef_pos"]) < 0.1, r2[readout]
    # the mean of the tokens loses where the square is
    assert max(r2["mean"]["object_pos"]) < max(r2["flat"]["object_pos"]) - 0.1


def test_probe_bad_input(tmp_path):
    tok, model = tiny_models()
    encoder = TotoEncoder(tok, model, keep_all=True)
    with pytest.raises(ValueError, match="readouts: expected names from"):
        ProbeConfig(readouts=("max",))
    path = square_store(tmp_path / "s.zarr", n_episodes=3, steps=4)
    with pytest.raises(ValueError, match=r"probe layers: expected 0..4 \(0 = token embedding\), got \[7\]"):
        run_probe(encoder, path, ProbeConfig(layers=(0, 7), stride=4), progress=False)
    with pytest.raises(ValueError, match="missing \\['wrist'\\]"):
        run_probe(encoder, path, ProbeConfig(camera="wrist"), progress=False)
