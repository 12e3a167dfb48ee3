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


def test_the_state_baseline_rolls_out_on_the_privileged_object_state():
    """The `state` policy reads the stored object-state keys at run time from obs['privileged']."""
    from policies.bc import build_policy

    node = {"backbone": "state", "object_keys": ["object"], "chunk": 4, "n_action_steps": 2, "hidden": 16}
    policy = build_policy(node, None, (), 64, low_dim_sizes={"object": 10}).eval()
    runner = RolloutRunner(RunnerConfig(n_episodes=1, env=state_only(horizon=5)))
    metrics = runner.run(policy, progress=False)
    assert metrics["episodes"][0]["length"] == 5


def test_test_and_selection_seeds_never_overlap():
    from envs.runner import SELECTION_SEED_START, TEST_SEED_START, wilson_interval

    assert TEST_SEED_START + 50 <= SELECTION_SEED_START
    RunnerConfig(n_episodes=SELECTION_SEED_START - TEST_SEED_START)  # every test seed, none beyond
    with pytest.raises(ValueError, match="would reach the selection seeds"):
        RunnerConfig(n_episodes=SELECTION_SEED_START - TEST_SEED_START + 1)
    RunnerConfig(seed_start=SELECTION_SEED_START, n_episodes=10)
    lo, hi = wilson_interval(45, 50)  # 90% over 50 episodes
    assert 0.78 < lo < 0.79 and 0.95 < hi < 0.96
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
