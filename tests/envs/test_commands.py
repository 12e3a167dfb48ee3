"""toto-collect and toto-eval end to end, as a user runs them."""

import json

import pytest

from tests.commands import run_command
from toto_robot.store import TrajectoryStore


@pytest.mark.render
def test_collect_then_eval(tmp_path):
    out = run_command("collect", "n_episodes=1", "env.cameras=[agentview]", "env.image_size=32",
                      "progress=false", "output=demo.zarr", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "wrote 1 episodes" in out.stdout and "demo.zarr" in out.stdout
    assert TrajectoryStore.open(tmp_path / "demo.zarr").episode_meta(0)["success"] is True

    out = run_command("evaluate", "n_episodes=2", "env.cameras=[]", "n_videos=0", "progress=false",
                      "results=record.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "outputs/eval/Lift-expert/eval.json").read_text())
    assert metrics["success_rate"] == 1.0 and metrics["policy"] == "expert"
    assert "success 100.0% over 2 episodes" in out.stdout
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["seeds"] == record["successes"] == [100_000, 100_001] and record["success_rate"] == 1.0
    assert record["expert_noise"] == 0.0 and record["cameras"] == [] and "results=record.json" in record["command"]


@pytest.mark.parametrize(
    "command, override, message",
    [
        ("collect", "env.task=Pour", "unknown task 'Pour'; valid tasks: Lift, Stack, PickPlaceCan, Door"),
        ("evaluate", "env.cameras=[wrist]", "unknown camera 'wrist' for task Lift; valid cameras:"),
        ("evaluate", "policy=smart", "Could not find 'policy/smart'"),
        ("evaluate", "policy=toto_mlp", "expected a scripted policy (policy=expert, policy=random) or a trained one"),
        ("collect", "policy=toto_mlp", "toto-collect rolls out scripted policies"),
    ],
)
def test_bad_input_exits_with_a_clear_message(tmp_path, command, override, message):
    out = run_command(command, override, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
