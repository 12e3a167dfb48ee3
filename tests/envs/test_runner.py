import json

import av
import pytest

from envs.experts import make_expert
from envs.random_policy import RandomPolicy
from envs.runner import EVAL_SEED_START, RolloutRunner, RunnerConfig


def state_only(task="Lift", **env):
    return {"task": task, "cameras": (), **env}


def test_expert_evaluation_writes_metrics(tmp_path):
    runner = RolloutRunner(RunnerConfig(n_episodes=3, n_videos=0, output_dir=str(tmp_path), env=state_only()))
    metrics = runner.run(make_expert("Lift"), progress=False)
    assert metrics["success_rate"] == 1.0
    assert metrics["mean_return"] == 1.0  # sparse reward: 1 on the success step
    assert [e["seed"] for e in metrics["episodes"]] == [EVAL_SEED_START + i for i in range(3)]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["success_rate"] == 1.0 and len(saved["episodes"]) == 3
    assert saved["mean_length"] == pytest.approx(sum(e["length"] for e in saved["episodes"]) / 3)
    assert saved["config"]["env"]["task"] == "Lift"


def test_random_policy_fails_and_runs_to_the_horizon():
    runner = RolloutRunner(RunnerConfig(n_episodes=2, n_videos=0, env=state_only(horizon=20)))
    metrics = runner.run(RandomPolicy(), progress=False)
    assert metrics["success_rate"] == 0.0
    assert [e["length"] for e in metrics["episodes"]] == [20, 20]


def test_parallel_workers_match_one_process():
    env = state_only()  # noisy expert: episode lengths differ from seed to seed
    one = RolloutRunner(RunnerConfig(n_episodes=3, n_videos=0, env=env)).run(make_expert("Lift", 0.3), progress=False)
    two = RolloutRunner(RunnerConfig(n_episodes=3, n_workers=2, n_videos=0, env=env)).run(
        make_expert("Lift", 0.3), progress=False
    )
    strip = [{k: e[k] for k in ("seed", "success", "ret", "length")} for e in one["episodes"]]
    assert strip == [{k: e[k] for k in ("seed", "success", "ret", "length")} for e in two["episodes"]]


@pytest.mark.render
def test_videos_are_written(tmp_path):
    config = RunnerConfig(n_episodes=2, n_videos=1, output_dir=str(tmp_path),
                          env={"task": "Lift", "cameras": ("agentview",), "image_size": 32, "video_size": 64})
    metrics = RolloutRunner(config).run(make_expert("Lift"), progress=False)
    first, second = metrics["episodes"]
    assert second["video"] is None
    with av.open(first["video"]) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == first["length"] + 1  # the reset frame, then one per step
    assert frames[0].shape == (64, 64, 3) and frames[0].std() > 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed_start": 10}, "evaluation seeds start at 100000"),
        ({"n_episodes": 0}, "n_episodes"),
        ({"n_videos": 1}, "output_dir"),
    ],
)
def test_bad_runner_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunnerConfig(**kwargs)
