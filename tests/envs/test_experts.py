import gymnasium
import numpy as np
import pytest

import envs
from envs.experts import EXPERTS, ExpertConfig, make_expert
from envs.runner import rollout


def run_expert(task: str, seeds, noise: float = 0.0):
    env = gymnasium.make(envs.env_id(task), cameras=[]).unwrapped
    try:
        return [rollout(env, make_expert(task, noise=noise), seed) for seed in seeds]
    finally:
        env.close()


def test_lift_expert_succeeds_quickly():
    episodes = run_expert("Lift", seeds=[0, 1, 2])
    assert all(e.success for e in episodes)
    assert all(e.length < 80 for e in episodes)  # about 40 steps: far from the 200-step horizon


def test_lift_expert_with_noise_succeeds_and_varies():
    assert all(e.success for e in run_expert("Lift", [5, 6], noise=0.2))
    env = gymnasium.make("toto/Lift-v0", cameras=[]).unwrapped
    try:
        obs, _ = env.reset(seed=5)
        a, b = make_expert("Lift", noise=0.2), make_expert("Lift", noise=0.2)
        a.reset(seed=1)
        b.reset(seed=2)
        state = {**obs, "privileged": env.privileged_state()}
        assert not np.allclose(a.select_action(state), b.select_action(state))
        a.reset(seed=1)
        b.reset(seed=1)
        np.testing.assert_array_equal(a.select_action(state), b.select_action(state))
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["Stack", "PickPlaceCan", "Door"])
def test_other_experts_succeed(task):
    assert all(e.success for e in run_expert(task, seeds=[0, 1]))


def test_expert_needs_privileged_state_and_valid_settings():
    expert = make_expert("Lift")
    with pytest.raises(ValueError, match="privileged"):
        expert.select_action({"robot0_eef_pos": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown task 'Pour'"):
        make_expert("Pour")
    with pytest.raises(ValueError, match="noise"):
        ExpertConfig(noise=-0.1)
    assert set(EXPERTS) == set(envs.TASKS)
