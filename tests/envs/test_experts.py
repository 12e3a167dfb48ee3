import gymnasium
import numpy as np
import pytest
import robosuite.utils.transform_utils as T

import envs
from envs.experts import EXPERTS, ExpertConfig, SquareExpert, make_expert, wrap, yaw_of
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


def test_square_expert_grasps_the_handle_and_succeeds():
    env = gymnasium.make(envs.env_id("Square"), cameras=[]).unwrapped
    expert = make_expert("Square")
    try:
        obs, _ = env.reset(seed=0)
        expert.reset(seed=0)
        at_carry = None
        for _ in range(env.config.horizon):
            state = env.privileged_state()
            action = expert.select_action({**obs, "privileged": state})
            if expert.phase_name == "carry" and at_carry is None:
                at_carry = state
            obs, _, terminated, _, _ = env.step(action)
            if terminated:
                break
        assert terminated and expert.phase_name in ("release", "retreat")
    finally:
        env.close()
    # held by the handle, 5.4 cm from the nut's centre, and lifted off the table (0.8 m; the nut lies at 0.83 m)
    eef, handle, nut = at_carry["robot0_eef_pos"], at_carry["SquareNut_handle_pos"], at_carry["SquareNut_pos"]
    assert np.linalg.norm(eef[:2] - handle[:2]) < 0.012 and np.linalg.norm(eef[:2] - nut[:2]) > 0.04
    assert nut[2] > 0.95


def test_square_experts_succeed_on_fixed_seeds():
    episodes = run_expert("Square", seeds=[1, 2, 3])
    assert all(e.success for e in episodes)
    assert all(e.length < 250 for e in episodes)  # about 135 steps: far from the 400-step horizon


def test_square_place_yaw_squares_the_nut_to_the_peg_within_the_wrist_range():
    expert = SquareExpert()
    peg_yaw = 0.2
    for nut_yaw in np.linspace(-np.pi, np.pi, 13):
        for held in (0.0, np.pi):  # the handle between the fingers either way round
            eef_yaw = wrap(nut_yaw - held, 2 * np.pi)
            state = {"robot0_eef_quat": T.mat2quat(_yaw_down(eef_yaw)), "SquareNut_quat": _quat_z(nut_yaw),
                     "peg_quat": _quat_z(peg_yaw)}
            place = expert.place_yaw(state)
            placed_nut = nut_yaw + (place - yaw_of(state["robot0_eef_quat"]))
            assert abs(wrap(placed_nut - peg_yaw, np.pi / 2)) < 1e-6
            assert abs(place) <= expert.max_yaw + 1e-9
            assert np.cos(placed_nut) < 0.3  # the handle does not point away from the robot


def _quat_z(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2)])


def _yaw_down(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, -1.0, -1.0])


def test_expert_needs_privileged_state_and_valid_settings():
    expert = make_expert("Lift")
    with pytest.raises(ValueError, match="privileged"):
        expert.select_action({"robot0_eef_pos": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown task 'Pour'"):
        make_expert("Pour")
    with pytest.raises(ValueError, match="noise"):
        ExpertConfig(noise=-0.1)
    assert set(EXPERTS) == set(envs.TASKS)
