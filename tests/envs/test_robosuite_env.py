import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.robosuite_env import PROPRIO_KEYS, TASKS, EnvConfig


def test_every_task_is_registered():
    for task in TASKS:
        assert envs.env_id(task) in gymnasium.registry


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError, match="unknown task 'Lfit'.*Lift, Stack, PickPlaceCan, Door, Square"):
        EnvConfig(task="Lfit")


def test_unknown_camera_lists_valid_cameras():
    with pytest.raises(ValueError, match="unknown camera 'wrist'.*agentview.*robot0_eye_in_hand"):
        EnvConfig(task="Lift", cameras=("wrist",))
    with pytest.raises(ValueError, match="unknown camera 'sideview' for task PickPlaceCan"):
        EnvConfig(task="PickPlaceCan", cameras=("sideview",))


@pytest.mark.parametrize(
    "field, value", [("image_size", 0), ("horizon", -1), ("control_freq", 0), ("cameras", ("agentview",) * 2)]
)
def test_bad_config_values_raise(field, value):
    with pytest.raises(ValueError, match=field):
        EnvConfig(**{field: value})


@pytest.mark.parametrize("task", list(TASKS))
def test_task_cameras_match_the_scene(task):
    env = gymnasium.make(envs.env_id(task), cameras=[])
    try:
        assert set(env.unwrapped._env.sim.model.camera_names) == set(TASKS[task].cameras)
    finally:
        env.close()


@pytest.mark.render
@pytest.mark.parametrize("task", list(TASKS))
def test_check_env(task):
    env = gymnasium.make(envs.env_id(task), image_size=32, video_size=32)
    try:
        check_env(env.unwrapped)
        obs, info = env.reset(seed=0)
        assert set(obs) == {"agentview_image", "robot0_eye_in_hand_image", *PROPRIO_KEYS}
        assert info == {"success": False}
    finally:
        env.close()


@pytest.mark.render
def test_images_are_upright_and_renderer_settings_applied():
    env = gymnasium.make("toto/Lift-v0", image_size=64)
    try:
        obs, _ = env.reset(seed=0)
        # agentview: dark wall and robot base at the top, the white table at the bottom
        agent = obs["agentview_image"].astype(float).mean(axis=(1, 2))
        assert agent[-16:].mean() > agent[:16].mean() + 50
        # wrist camera: the table ahead at the top, the dark fingers at the bottom
        wrist = obs["robot0_eye_in_hand_image"].astype(float).mean(axis=(1, 2))
        assert wrist[:16].mean() > wrist[-8:].mean() + 50
        flags = env.unwrapped._env.sim._render_context_offscreen.scn.flags
        assert flags[mujoco.mjtRndFlag.mjRND_REFLECTION] == 0
        assert flags[mujoco.mjtRndFlag.mjRND_SHADOW] == 1
    finally:
        env.close()


def test_seeded_reset_is_deterministic_and_seeds_differ():
    env = gymnasium.make("toto/Stack-v0", cameras=[])
    try:
        env.reset(seed=3)
        a = env.unwrapped.privileged_state()
        env.reset(seed=4)
        b = env.unwrapped.privileged_state()
        env.reset(seed=3)
        c = env.unwrapped.privileged_state()
    finally:
        env.close()
    np.testing.assert_array_equal(a["cubeA_pos"], c["cubeA_pos"])
    np.testing.assert_array_equal(a["robot0_eef_pos"], c["robot0_eef_pos"])
    assert np.abs(a["cubeA_pos"] - b["cubeA_pos"]).max() > 1e-3


def test_truncated_at_horizon_and_state_only_observation():
    env = gymnasium.make("toto/Lift-v0", cameras=[], horizon=5)
    try:
        obs, _ = env.reset(seed=0)
        assert set(obs) == set(PROPRIO_KEYS)  # object poses stay out of the observation
        assert obs["robot0_eef_pos"].dtype == np.float32
        privileged = env.unwrapped.privileged_state()
        assert "cube_pos" in privileged and privileged["object"].shape == (10,)  # the stored object-state keys
        np.testing.assert_array_equal(privileged["object_pos"], privileged["cube_pos"].astype(np.float32))
        for t in range(5):
            obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
            assert not terminated and info["success"] is False and reward == 0.0
            assert truncated == (t == 4)
        with pytest.raises(ValueError, match=r"action: expected shape \(7,\)"):
            env.step(np.zeros(6))
    finally:
        env.close()


def test_square_is_robomimics_square_with_its_object_state():
    spec = TASKS["Square"]
    assert (spec.robosuite_name, spec.horizon, spec.object_dim) == ("NutAssemblySquare", 400, 14)
    env = gymnasium.make("toto/Square-v0", cameras=[])
    try:
        env.reset(seed=0)
        for _ in range(10):  # the nut is dropped from 6 cm above the table
            env.step(np.zeros(7, np.float32))
        privileged = env.unwrapped.privileged_state()
    finally:
        env.close()
    assert "RoundNut_pos" not in privileged  # only the square nut
    assert privileged["object"].shape == (14,)  # nut-to-gripper position, quaternion; nut position, quaternion
    np.testing.assert_array_equal(privileged["object_pos"], privileged["SquareNut_pos"].astype(np.float32))
    nut, handle, peg = privileged["SquareNut_pos"], privileged["SquareNut_handle_pos"], privileged["peg_pos"]
    assert abs(np.linalg.norm(handle - nut) - 0.054) < 1e-3 and abs(nut[2] - 0.83) < 2e-3  # flat on the table
    np.testing.assert_allclose(peg, [0.23, 0.1, 0.85])  # the square peg, not the round one at y = -0.1
    np.testing.assert_allclose(privileged["peg_quat"], [0.0, 0.0, 0.0, 1.0])
