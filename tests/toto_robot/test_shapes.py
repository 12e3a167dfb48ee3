"""The shape contract (toto_robot/shapes.py): validated, JSON round trip, and read the same by the robosuite env,
the policies' defaults, the simulated arm and the robot mapping."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from envs.robosuite_env import ACTION_DIM, PROPRIO_DIMS, PROPRIO_KEYS, EnvConfig, RobosuiteEnv
from envs.robot import RobotMapping
from envs.sim_robot import ACTION_NAMES, STATE_NAMES, SimRobot, SimRobotConfig
from policies.bc import PolicyConfig
from policies.reference import ReferencePolicyConfig
from toto_robot.config import CONFIG_DIR
from toto_robot.shapes import ROBOSUITE_PANDA, ShapeMeta, camera_name, image_key

META = ROBOSUITE_PANDA


def test_the_robosuite_contract():
    assert META.cameras == ("agentview_image", "robot0_eye_in_hand_image") and META.image_size == 64
    assert META.state_keys == ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    assert META.state_sizes == (3, 4, 2) and META.state_size == 9 and META.action_dim == 7
    assert META.obs_keys == (*META.cameras, *META.state_keys)
    assert META.observation_spec()["agentview_image"] == ((64, 64, 3), "uint8")
    assert META.observation_spec()["robot0_eef_quat"] == ((4,), "float32")
    assert camera_name(image_key("robot0_eye_in_hand")) == "robot0_eye_in_hand"
    with pytest.raises(ValueError, match="camera key: expected '<camera>_image', got 'agentview'"):
        camera_name("agentview")


def test_contract_round_trips_through_json():
    text = json.dumps(META.to_dict())
    back = ShapeMeta.from_dict(json.loads(text))
    assert back == META and back.state_keys == META.state_keys  # the state order survives
    reordered = ShapeMeta.from_dict({**META.to_dict(), "state": dict(reversed(META.state.items()))})
    assert reordered != META  # order is part of the contract: it is the concatenation order
    with pytest.raises(ValueError, match=r"from_dict: expected exactly the keys .* got \['action_dim', 'cameras'"):
        ShapeMeta.from_dict({"cameras": [], "action_dim": 7})


def test_contract_is_a_private_copy():
    state = {"s": 2}
    meta = ShapeMeta(cameras=["c_image"], image_size=8, state=state, action_dim=1)
    state["s"] = 5
    assert meta.state == {"s": 2} and meta.cameras == ("c_image",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.action_dim = 3


@pytest.mark.parametrize(("change", "match"), [
    ({"cameras": "agentview_image"}, "cameras: expected a sequence of non-empty key strings"),
    ({"cameras": ("a_image", "a_image")}, "cameras: expected distinct keys"),
    ({"image_size": 0}, "image_size: expected a positive integer, got 0"),
    ({"image_size": 64.0}, "image_size: expected a positive integer, got 64.0"),
    ({"state": {"robot0_eef_pos": 0}}, r"state: expected non-empty keys with positive integer sizes, got \{'r"),
    ({"state": {"agentview_image": 3}}, r"state: keys \['agentview_image'\] are also camera keys"),
    ({"cameras": (), "state": {}}, "expected at least one camera or state key"),
    ({"action_dim": True}, "action_dim: expected a positive integer, got True"),
])
def test_bad_contracts_raise(change, match):
    with pytest.raises(ValueError, match=f"ShapeMeta.*{match}"):
        dataclasses.replace(META, **change)


def test_state_must_be_a_mapping():
    with pytest.raises(TypeError, match="ShapeMeta.state: expected a mapping of key -> size, got \\[3, 4, 2\\]"):
        dataclasses.replace(META, state=[3, 4, 2])


def test_check_names_every_difference():
    META.check(ShapeMeta.from_dict(META.to_dict()))
    other = dataclasses.replace(META, image_size=84, action_dim=6)
    with pytest.raises(ValueError, match=r"^policy: image_size 84 \(expected 64\); action_dim 6 \(expected 7\)$"):
        META.check(other, "policy")
    with pytest.raises(ValueError, match=r"^store: state \{'robot0_gripper_qpos': 2, "):  # same sizes, other order
        META.check(dataclasses.replace(META, state=dict(reversed(META.state.items()))), "store")


def test_robosuite_env_observes_the_contract():
    assert (ACTION_DIM, PROPRIO_KEYS, PROPRIO_DIMS) == (META.action_dim, META.state_keys, META.state)
    config = EnvConfig(image_size=META.image_size)
    assert config.shape_meta == META
    spaces = RobosuiteEnv.observation_spaces(config)
    assert {k: (s.shape, s.dtype.name) for k, s in spaces.items()} == META.observation_spec()
    assert list(spaces) == list(META.obs_keys)
    state_only = EnvConfig(cameras=())  # the default 84 px renders nothing without cameras
    assert list(RobosuiteEnv.observation_spaces(state_only)) == list(META.state_keys)


def test_policy_defaults_are_the_contract():
    config = PolicyConfig(backbone="cnn")
    assert config.shape_meta == META
    assert (config.cameras, config.proprio_keys, config.proprio_dims, config.action_dim, config.image_size) == (
        META.cameras, META.state_keys, META.state_sizes, META.action_dim, META.image_size)
    state = PolicyConfig(backbone="state", object_keys=("object",), object_dims=(10,))
    assert state.shape_meta.state == {"object": 10, **META.state} and state.shape_meta.cameras == ()

    reference = ReferencePolicyConfig()
    assert reference.image_keys == list(META.cameras[:1]) and reference.state_keys == list(META.state_keys)
    assert (reference.state_dim, reference.action_dim) == (META.state_size, META.action_dim)
    full = ReferencePolicyConfig.from_shape_meta(META, horizon=4)
    assert full.image_keys == list(META.cameras) and full.horizon == 4


def test_sim_robot_and_its_mapping_deliver_the_contract():
    assert list(STATE_NAMES) == list(META.state_keys) and len(ACTION_NAMES) == META.action_dim
    assert {k: len(v) for k, v in STATE_NAMES.items()} == META.state
    robot = SimRobot(SimRobotConfig(camera_names=[]))  # not connected: no env is built
    assert list(robot.observation_features) == [n for names in STATE_NAMES.values() for n in names]
    assert SimRobotConfig().image_size == META.image_size

    # The dry run's robot config maps the sim arm's features onto the contract (one camera of the two).
    mapping = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "robot/sim.yaml").mapping)
    mapping = RobotMapping(**mapping)
    dataclasses.replace(META, cameras=("agentview_image",)).check(mapping.shape_meta, "robot/sim.yaml")
    assert mapping.state == {k: list(v) for k, v in STATE_NAMES.items()} and mapping.action == list(ACTION_NAMES)
    with pytest.raises(ValueError, match="RobotMapping.image_size: a shape contract needs a fixed image size"):
        _ = dataclasses.replace(mapping, image_size=None).shape_meta


def test_shapes_imports_nothing_heavy():
    code = ("import sys, toto_robot.shapes; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('envs', 'policies', 'numpy', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
