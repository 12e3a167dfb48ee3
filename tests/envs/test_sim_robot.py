"""The simulated LeRobot robot, the fault injector, the LeRobot adapter, and the control loop against them."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.robots import Robot
from lerobot.utils.errors import DeviceNotConnectedError
from omegaconf import OmegaConf

from envs.robot import LeRobotAdapter, RobotMapping, lerobot_robot_config, make_lerobot_robot
from envs.sim_robot import ACTION_NAMES, STATE_NAMES, FaultConfig, FaultyRobot, SimRobot, SimRobotConfig
from policies.reference import ReferencePolicy, ReferencePolicyConfig
from tests.toto_robot.helpers import tiny_models
from toto_robot.config import CONFIG_DIR
from toto_robot.deploy import (
    COMPLETED,
    DISCONNECTED,
    INTERVENTION_BITS,
    LoopConfig,
    SafetyConfig,
    log_episode,
    open_log,
    run_episode,
)
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.store import TrajectoryStore

CONFIGS = Path(CONFIG_DIR)
STATE = {key: list(names) for key, names in STATE_NAMES.items()}
SAFETY = SafetyConfig(hold_keep=[6])


def sim_mapping(cameras: bool) -> RobotMapping:
    return RobotMapping(cameras={"agentview_image": "agentview"} if cameras else {}, state=STATE,
                        action=list(ACTION_NAMES), image_size=64 if cameras else None)


def test_sim_robot_speaks_lerobots_robot_api():
    robot = make_lerobot_robot({"type": "toto_sim", "camera_names": [], "seed": 3})
    assert isinstance(robot, SimRobot) and isinstance(robot, Robot)
    assert set(robot.action_features) == set(ACTION_NAMES)
    with pytest.raises(DeviceNotConnectedError):
        robot.get_observation()
    robot.connect()
    try:
        obs = robot.get_observation()
        assert set(obs) == set(robot.observation_features)
        before = np.array([obs[k] for k in STATE_NAMES["robot0_eef_pos"]])
        for _ in range(5):
            sent = robot.send_action({**dict.fromkeys(ACTION_NAMES, 0.0), "dz": 1.0})
        after = np.array([robot.get_observation()[k] for k in STATE_NAMES["robot0_eef_pos"]])
        assert sent["dz"] == 1.0 and after[2] > before[2] + 0.01  # moved up
        robot.reset(3)
        again = np.array([robot.get_observation()[k] for k in STATE_NAMES["robot0_eef_pos"]])
        np.testing.assert_allclose(again, before)  # the same seed starts the same episode
        with pytest.raises(KeyError, match="missing"):
            robot.send_action({"dx": 0.0})
    finally:
        robot.disconnect()
    assert not robot.is_connected


def test_unknown_robot_type_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"robot type: expected one of \[.*'so101_follower'.*'toto_sim'.*got 'nope'"):
        make_lerobot_robot({"type": "nope"})
    with pytest.raises(ValueError, match="expected a mapping with a 'type' key"):
        make_lerobot_robot({"port": "/dev/ttyACM0"})


def test_shipped_real_robot_config_decodes_as_lerobot_does(tmp_path):
    """configs/robot/so101.yaml decodes to LeRobot's SO-101 config with its camera; building the robot
    needs the Feetech SDK (LeRobot's `feetech` extra), and without it the error says so."""
    cfg = OmegaConf.load(CONFIGS / "robot/so101.yaml")
    lerobot_cfg = {**OmegaConf.to_container(cfg.lerobot), "port": "/dev/null", "calibration_dir": str(tmp_path)}
    robot_cfg = lerobot_robot_config(lerobot_cfg)
    # (LeRobot registers one class for so100 and so101, so its `.type` reads "so100_follower" for both)
    assert type(robot_cfg).__name__ == "SOFollowerRobotConfig" and robot_cfg.cameras["wrist"].width == 640
    assert RobotMapping(**OmegaConf.to_container(cfg.mapping)).action[-1] == "gripper.pos"
    try:
        import scservo_sdk  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="robot type 'so101_follower': 'feetech-servo-sdk' is required"):
            make_lerobot_robot(lerobot_cfg)
    else:
        adapter = LeRobotAdapter(make_lerobot_robot(lerobot_cfg), RobotMapping(**OmegaConf.to_container(cfg.mapping)))
        assert adapter.observation_spec()["joint_pos"] == ((6,), "float32")


def test_adapter_names_keys_the_robot_lacks():
    robot = SimRobot(SimRobotConfig(camera_names=[]))
    with pytest.raises(ValueError, match=r"reads observation keys \['agentview'\], which the robot does not have"):
        LeRobotAdapter(robot, sim_mapping(cameras=True))
    with pytest.raises(ValueError, match=r"leaves action keys \['gripper'\] unset"):
        LeRobotAdapter(robot, RobotMapping(state=STATE, action=list(ACTION_NAMES[:-1])))


class StatePolicy(torch.nn.Module):
    """A tiny MLP chunk head on the end-effector state (no camera): inference in well under a tick."""

    def __init__(self, horizon: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.horizon = horizon
        self.net = torch.nn.Sequential(torch.nn.Linear(9, 32), torch.nn.Tanh(), torch.nn.Linear(32, horizon * 7))

    def reset(self):
        pass

    @torch.no_grad()
    def predict_action_chunk(self, obs):
        x = torch.as_tensor(np.concatenate([obs[k] for k in STATE]))[None]
        return (0.3 * torch.tanh(self.net(x))).reshape(self.horizon, 7).numpy()

    def select_action(self, obs):
        return self.predict_action_chunk(obs)[0]


def test_loop_holds_its_rate_on_the_simulated_robot():
    loop = LoopConfig(rate_hz=10, n_steps=30)
    with LeRobotAdapter(make_lerobot_robot({"type": "toto_sim", "camera_names": []}), sim_mapping(False)) as robot:
        result = run_episode(robot, StatePolicy(), loop, SAFETY)
    assert result.status == COMPLETED
    ratio = result.timing["achieved_rate_hz"] / loop.rate_hz
    assert 0.85 < ratio < 1.1, result.timing
    period = np.median(np.diff(result.steps["t_action"][:, 0]))
    assert 0.9 < period / loop.period < 1.1
    assert result.timing["missed_ticks"] <= 3


@pytest.mark.render
def test_faults_are_injected_as_configured():
    base = SimRobot(SimRobotConfig(camera_names=["agentview"], image_size=32))
    robot = FaultyRobot.wrap(base, FaultConfig(dropped_frames=[2], camera_stall=[[4, 9]], latency_spike=[[10, 0.15]],
                                          nan_state=[[11, 12]], disconnect_at=13, camera_timeout_s=0.5))
    robot.connect()
    try:
        obs = [robot.get_observation()]
        stamps = [robot.cameras["agentview"].latest_timestamp]  # capture times, beside the observation
        for i in range(1, 13):
            robot.send_action({**dict.fromkeys(ACTION_NAMES, 0.0), "dx": 1.0})  # the arm moves: frames change
            if i in (5, 6, 7):  # the stall outlasts camera_timeout_s even when a step is fast; a step under
                time.sleep(0.25)  # load (~0.15 s) stays well inside it, so frame 4 still arrives
            try:
                obs.append(robot.get_observation())
            except TimeoutError:
                obs.append(None)
            stamps.append(robot.cameras["agentview"].latest_timestamp)
        assert np.array_equal(obs[2]["agentview"], obs[1]["agentview"])  # dropped frame: the previous one
        assert not np.array_equal(obs[3]["agentview"], obs[2]["agentview"])
        assert np.array_equal(obs[4]["agentview"], obs[3]["agentview"])  # the stall freezes the last frame
        assert stamps[4] == stamps[3]
        assert None in obs[5:9]  # past camera_timeout_s a stalled camera raises TimeoutError
        assert obs[9] is not None and not np.array_equal(obs[9]["agentview"], obs[3]["agentview"])
        assert time.perf_counter() - stamps[10] >= 0.15  # arrived late, as old as the delay
        assert np.isnan(obs[11]["eef_pos.x"]) and not np.isnan(obs[10]["eef_pos.x"])
        with pytest.raises(DeviceNotConnectedError):
            robot.get_observation()
        with pytest.raises(DeviceNotConnectedError):
            robot.send_action(dict.fromkeys(ACTION_NAMES, 0.0))
        kinds = {kind for _, kind in robot.log}
        assert {"dropped_frame", "camera_stall", "latency_spike 0.15 s", "nan_state", "disconnect"} <= kinds
    finally:
        robot.disconnect()


@pytest.mark.render
def test_loop_survives_faults_and_logs_them(tmp_path):
    """Reference policy (tiny streaming encoder) on the simulated arm with a camera stall, NaN readings and a
    disconnect: it holds, resumes, stops on the disconnect, and the log reads back."""
    tok, model = tiny_models(max_frames=4)
    policy = ReferencePolicy(StreamingEncoder(TotoEncoder(tok, model), window=4),
                             ReferencePolicyConfig(state_keys=list(STATE), horizon=4))
    faults = FaultConfig(camera_stall=[[6, 14]], nan_state=[[18, 19]], disconnect_at=24)
    robot = FaultyRobot.wrap(make_lerobot_robot({"type": "toto_sim", "camera_names": ["agentview"], "image_size": 64}),
                        faults)
    # n_steps leaves room for skipped ticks on a loaded machine: the disconnect (robot call 24) ends it anyway
    loop = LoopConfig(rate_hz=10, n_steps=120, max_obs_age_s=0.25, max_hold_s=2.0)
    with LeRobotAdapter(robot, sim_mapping(True)) as adapter:
        result = run_episode(adapter, policy, loop, SAFETY)
        store = open_log(tmp_path / "sim.zarr", adapter.observation_spec(), 7, {"fps": 10})
        log_episode(store, result, task="lift the red cube", source="deploy:toto_sim", seed=0,
                    success=adapter.success)
    assert result.status == DISCONNECTED
    kinds = [e["kind"] for e in result.interventions]
    assert "hold_stale" in kinds and "hold_invalid" in kinds and kinds[-2:] == ["disconnect", "safe_stop_failed"]
    flags = result.steps["intervention"][:, 0]
    stale = (flags & INTERVENTION_BITS["hold_stale"]) > 0
    np.testing.assert_allclose(result.steps["action"][stale, :6], 0.0)  # holding: zero deltas
    back = TrajectoryStore.open(tmp_path / "sim.zarr")
    assert back.n_episodes == 1 and back.episode_meta(0)["status"] == DISCONNECTED
    assert back.episode(0)["agentview_image"].shape[1:] == (64, 64, 3)


def test_lerobots_factory_builds_the_simulated_and_the_faulty_robot():
    """make_robot_from_config (what lerobot-record and lerobot-teleoperate call) builds both our robot types,
    from configs decoded as LeRobot's command line decodes them."""
    from lerobot.robots import make_robot_from_config
    from lerobot.utils.feature_utils import hw_to_dataset_features

    sim = make_robot_from_config(lerobot_robot_config({"type": "toto_sim", "camera_names": ["agentview"]}))
    assert type(sim) is SimRobot and set(sim.cameras) == {"agentview"}
    # LeRobot's recorder: 9 state values, the camera's capture time kept out of observation.state
    features = hw_to_dataset_features(sim.observation_features, "observation")
    assert features["observation.state"]["names"] == [n for names in STATE_NAMES.values() for n in names]
    faulty = make_robot_from_config(lerobot_robot_config(
        {"type": "toto_faulty", "camera_names": [], "faults": {"dropped_frames": [3]}}))
    assert type(faulty) is FaultyRobot and type(faulty.robot) is SimRobot and faulty.faults.dropped_frames == [3]
    assert faulty.action_features == sim.action_features
