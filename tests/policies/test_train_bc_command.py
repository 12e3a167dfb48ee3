import json

import pytest

from tests.commands import run_command


def test_missing_store_is_a_clear_error(tmp_path):
    res = run_command("train_bc", f"store={tmp_path / 'none.zarr'}")
    assert res.returncode == 2
    assert "expected a trajectory store" in res.stderr and "Traceback" not in res.stderr


def test_store_without_env_is_a_clear_error(tmp_path):
    from tests.policies.test_bc import make_store

    path = make_store(tmp_path / "s.zarr", n_episodes=1, steps=3)
    res = run_command("train_bc", f"store={path}")
    assert res.returncode == 2
    assert "no 'env' attribute" in res.stderr


@pytest.mark.render
def test_toto_eval_runs_a_trained_checkpoint(tmp_path):
    from policies.bc import build_policy
    from tests.policies.test_bc import CAMS

    build_policy({"backbone": "cnn", "chunk": 4, "n_action_steps": 2, "hidden": 32}, None, CAMS, 64).save(tmp_path / "p")
    res = run_command("evaluate", "policy=checkpoint", f"policy.path={tmp_path / 'p'}", "env.image_size=64",
                      "env.horizon=5", "n_episodes=1", "n_videos=0", "progress=false",
                      f"output_dir={tmp_path / 'eval'}")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert metrics["policy"] == "checkpoint" and metrics["episodes"][0]["length"] == 5
