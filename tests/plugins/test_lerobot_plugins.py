"""The LeRobot plugins (plugins/) through LeRobot's own commands: lerobot-train --policy.type=toto on a dataset
exported from a collected store, then lerobot-eval of that checkpoint on the `toto` env."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envs import EnvConfig, RandomPolicy
from envs.collect import collect
from tests.toto_robot.helpers import tiny_models
from toto_robot.encoder import save_toto
from toto_robot.lerobot_io import export_lerobot

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
TINY = ["--policy.hidden=32", "--policy.chunk=4", "--policy.n_action_steps=2", "--policy.device=cpu"]

pytestmark = pytest.mark.skipif(shutil.which("lerobot-train", path=str(BIN)) is None,
                                reason="needs lerobot[training] and the plugins (make setup installs them)")


def lerobot(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command), *args], env=ENV, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lerobot")
    tok, model = tiny_models(max_frames=8)
    save_toto(root / "toto", tok, model)
    store = collect(root / "demos.zarr", RandomPolicy(), EnvConfig(task="Lift", image_size=64, horizon=12), 2,
                    keep_failed=True, progress=False)
    export_lerobot(store, root / "demos", use_videos=False, progress=False)
    return root


def test_lerobot_train_then_eval_a_toto_policy(run):
    train = lerobot("lerobot-train", "--policy.type=toto", f"--policy.encoder_checkpoint={run / 'toto'}",
                    "--dataset.repo_id=local/demos", f"--dataset.root={run / 'demos'}", "--steps=20",
                    "--batch_size=4", "--num_workers=0", f"--output_dir={run / 'train'}", "--save_freq=20",
                    "--log_freq=10", "--policy.push_to_hub=false", "--wandb.enable=false", *TINY)
    assert train.returncode == 0, train.stderr[-3000:]
    checkpoint = run / "train/checkpoints/last/pretrained_model"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["type"] == "toto" and json.loads(config["bc_policy"])["cameras"]  # rebuilds without the encoder
    shutil.rmtree(run / "toto")  # the checkpoint alone is enough

    evaluate = lerobot("lerobot-eval", f"--policy.path={checkpoint}", "--env.type=toto", "--env.task=Lift",
                       "--env.episode_length=8", "--eval.n_episodes=2", "--eval.batch_size=1",
                       "--policy.device=cpu", f"--output_dir={run / 'eval'}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    overall = json.loads((run / "eval/eval_info.json").read_text())["overall"]
    assert overall["n_episodes"] == 2


def test_bad_inputs_name_both_sides(run):
    import lerobot_env_toto  # noqa: F401  (registers the env type)
    from lerobot.envs import make_env_config

    with pytest.raises(ValueError, match=r"unknown task 'Nope'; valid tasks: Lift, Stack"):
        make_env_config("toto", task="Nope")
    train = lerobot("lerobot-train", "--policy.type=toto", f"--policy.encoder_checkpoint={run / 'enc'}",
                    "--policy.cameras=[wrist]", "--dataset.repo_id=local/demos", f"--dataset.root={run / 'demos'}",
                    "--steps=1", f"--output_dir={run / 'bad'}", "--policy.push_to_hub=false",
                    "--wandb.enable=false", *TINY)
    assert train.returncode != 0
    assert "the policy reads ['observation.images.wrist'], which the data does not have" in train.stderr
    assert "observation.images.agentview" in train.stderr


def test_the_feature_cache_trains_on_the_features_the_encoder_gives(tmp_path):
    """The `toto` policy's in-memory feature cache: the same loss as encoding every batch, each distinct frame
    encoded once (a repeated batch is all hits), a shifted frame a new entry, float16 within rounding."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot_policy_toto.configuration_toto import TotoConfig
    from lerobot_policy_toto.modeling_toto import TotoPolicy

    tok, model = tiny_models(max_frames=8)
    save_toto(tmp_path / "toto", tok, model)
    features = {"observation.images.agentview": PolicyFeature(type=FeatureType.VISUAL, shape=(3, 64, 64)),
                "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(9,))}
    action = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}

    def step(p):  # dropout draws from the global generator: the same draws for every policy compared
        torch.manual_seed(5)
        return p(batch)

    def policy(**kw):
        cfg = TotoConfig(encoder_checkpoint=str(tmp_path / "toto"), input_features=features, output_features=action,
                         hidden=32, chunk=4, n_action_steps=2, device="cpu", readout="flatten", **kw)
        torch.manual_seed(0)
        return TotoPolicy(cfg).train()

    g = torch.Generator().manual_seed(1)
    batch = {"observation.images.agentview": torch.rand(6, 3, 64, 64, generator=g),
             "observation.state": torch.randn(6, 9, generator=g), "action": torch.randn(6, 4, 7, generator=g)}
    batch["observation.images.agentview"][3] = batch["observation.images.agentview"][0]  # a repeated frame
    plain, cached, half = policy(feature_cache=False), policy(), policy(feature_cache_dtype="float16")
    loss, _ = step(plain)
    got, metrics = step(cached)
    cache = cached.feature_caches["observation.images.agentview"]
    assert torch.allclose(got, loss, atol=1e-6) and metrics["cached_frames"] == 5 and cache.misses == 5
    again, _ = step(cached)
    assert cache.misses == 5 and cache.hits == 6 + 1 and torch.allclose(again, got, atol=1e-6)
    assert abs(step(half)[0].item() - loss.item()) < 1e-2
    shifted = policy(feature_cache=False)
    shifted.model.cfg.shift_augment = 2
    sc = policy()
    sc.model.cfg.shift_augment = 2
    assert torch.allclose(step(sc)[0], step(shifted)[0], atol=1e-6)  # the same shifts drawn, then cached
