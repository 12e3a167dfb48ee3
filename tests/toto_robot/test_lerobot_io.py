import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

from toto_robot.commands.convert import main as convert_main
from toto_robot.lerobot_io import SIDECAR, compare_stores, export_lerobot, import_lerobot
from toto_robot.shapes import ROBOSUITE_PANDA
from toto_robot.store import TrajectoryStore

SIZE = 32
LENGTHS = [12, 9]


def smooth_frames(episode: int, length: int) -> np.ndarray:
    """A lit gradient with a soft blob moving across it: camera-like content for a video codec."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    frames = []
    for t in range(length):
        cx, cy = 0.2 + 0.6 * t / length, 0.3 + 0.1 * episode
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02)
        rgb = np.stack([0.3 + 0.5 * x, 0.2 + 0.4 * y, 0.4 * (1 - x)], axis=-1) + 0.5 * blob[..., None]
        frames.append(np.clip(rgb * 255, 0, 255).round())
    return np.asarray(frames, np.uint8)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> TrajectoryStore:
    path = tmp_path_factory.mktemp("source") / "demos.zarr"
    schema = {  # the state keys out of the contract's order: the export packs them in its order
        "agentview_image": ((SIZE, SIZE, 3), "uint8"),
        "robot0_gripper_qpos": ((2,), "float32"),
        "robot0_eef_pos": ((3,), "float32"),
        "object": ((4,), "float32"),
        "action": ((7,), "float32"),
        "reward": ((1,), "float32"),
    }
    attrs = {"fps": 20, "env": "Lift", "camera": "agentview", "robot_type": "panda"}
    store = TrajectoryStore.create(path, schema, attrs)
    rng = np.random.default_rng(0)
    for i, length in enumerate(LENGTHS):
        data = {
            "agentview_image": smooth_frames(i, length),
            "robot0_gripper_qpos": rng.standard_normal((length, 2)).astype(np.float32),
            "robot0_eef_pos": rng.standard_normal((length, 3)).astype(np.float32),
            "object": rng.standard_normal((length, 4)).astype(np.float32),
            "action": rng.standard_normal((length, 7)).astype(np.float32),
            "reward": rng.standard_normal((length, 1)).astype(np.float32),
        }
        meta = {"task": f"lift {i}", "seed": 10 + i, "success": i == 0, "source": "scripted", "note": [i]}
        store.add_episode(data, meta)
    return TrajectoryStore.open(path)


def test_video_round_trip_from_the_command_line(source, tmp_path, capsys):
    out = tmp_path / "lerobot"
    assert convert_main(["export", str(source.path), str(out), "--verify", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 2 episodes (21 steps) to {out}" in printed
    assert "action: max_abs_diff 0" in printed and "psnr_db" in printed

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("local/lerobot", root=out, video_backend="pyav")
    assert dataset.meta.total_episodes == 2 and dataset.meta.total_frames == 21
    features = dataset.meta.features
    assert features["observation.images.agentview"]["dtype"] == "video"
    assert dataset.meta.fps == 20 and dataset.meta.robot_type == "panda"
    # LeRobot's naming: one named state vector in the contract's order, object state apart, next.reward
    assert features["observation.state"]["names"] == [
        "robot0_eef_pos.x", "robot0_eef_pos.y", "robot0_eef_pos.z", "robot0_gripper_qpos.left",
        "robot0_gripper_qpos.right"]
    assert features["observation.environment_state"]["names"] == [f"object.{i}" for i in range(4)]
    assert features["action"]["names"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    assert "next.reward" in features and not any(f.startswith("observation.robot0") for f in features)
    frame = dataset[LENGTHS[0] + 1]  # episode 1, step 1
    np.testing.assert_array_equal(
        frame["observation.state"].numpy(),
        np.concatenate([source.episode(1)["robot0_eef_pos"][1], source.episode(1)["robot0_gripper_qpos"][1]]))

    back_path = tmp_path / "back.zarr"
    assert convert_main(["import", str(out), str(back_path), "--quiet"]) == 0
    back = TrajectoryStore.open(back_path)
    report = compare_stores(source, back)
    assert all(report[k]["max_abs_diff"] == 0 for k in source.keys if k != "agentview_image"), report
    assert report["agentview_image"]["psnr_db"] > 30, report
    for i in range(2):
        assert back.episode_meta(i) == source.episode_meta(i)
    assert back.attrs == source.attrs


def test_png_round_trip_is_exact_and_foreign_datasets_import(source, tmp_path):
    out = export_lerobot(source, tmp_path / "lerobot", use_videos=False, progress=False)
    back = import_lerobot(out, tmp_path / "back.zarr", zarr_format=3, progress=False)
    assert back.zarr_format == 3
    assert all(entry["max_abs_diff"] == 0 for entry in compare_stores(source, back).values())

    # Without the sidecar the dataset looks like any LeRobot dataset: metadata comes from LeRobot.
    (out / SIDECAR).unlink()
    foreign = import_lerobot(out, tmp_path / "foreign.zarr", repo_id="someone/demos", progress=False)
    assert set(foreign.keys) == set(source.keys)  # the state vector split back by its names
    assert foreign.attrs == {"fps": 20, "robot_type": "panda", "lerobot_repo_id": "someone/demos"}
    assert foreign.episode_meta(1) == {
        "task": "lift 1",
        "seed": None,
        "success": None,
        "source": "lerobot:someone/demos",
        "length": LENGTHS[1],
    }
    for key in source.keys:
        np.testing.assert_array_equal(foreign.episode(1)[key], source.episode(1)[key])


def test_old_naming_and_lerobot_recordings_import(tmp_path):
    """Our earlier exports (observation.<key> per key, observation.reward) and a LeRobot recording of the
    simulated arm (hw_to_dataset_features: a named observation.state, no timestamps in it) both import."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.feature_utils import hw_to_dataset_features

    from envs.sim_robot import SimRobot, SimRobotConfig

    old = LeRobotDataset.create("local/old", fps=10, root=tmp_path / "old", use_videos=False, features={
        "observation.images.agentview_image": {"dtype": "image", "shape": (8, 8, 3),
                                               "names": ["height", "width", "channels"]},
        "observation.robot0_eef_pos": {"dtype": "float32", "shape": (3,), "names": None},
        "observation.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "action": {"dtype": "float32", "shape": (7,), "names": None}})
    robot = SimRobot(SimRobotConfig(camera_names=["agentview"], image_size=8))
    features = hw_to_dataset_features(robot.observation_features, "observation", use_video=False)
    features |= hw_to_dataset_features(robot.action_features, "action")
    assert features["observation.state"]["shape"] == (ROBOSUITE_PANDA.state_size,)  # no camera timestamp
    recorded = LeRobotDataset.create("local/rec", fps=10, root=tmp_path / "rec", use_videos=False,
                                     features=features, robot_type=robot.robot_type)
    rng = np.random.default_rng(1)
    for dataset in (old, recorded):
        for _ in range(3):
            frame = {k: (rng.integers(0, 255, spec["shape"], dtype=np.uint8) if spec["dtype"] == "image"
                         else rng.standard_normal(spec["shape"]).astype(np.float32))
                     for k, spec in dataset.features.items() if k not in ("timestamp", "frame_index",
                                                                           "episode_index", "index", "task_index")}
            dataset.add_frame(frame | {"task": "lift"})
        dataset.save_episode()
        dataset.finalize()
    back = import_lerobot(tmp_path / "old", tmp_path / "old.zarr", progress=False)
    assert back.keys == ("agentview_image", "robot0_eef_pos", "reward", "action")
    rec = import_lerobot(tmp_path / "rec", tmp_path / "rec.zarr", progress=False)
    # the sim arm names its state "eef_pos.x", ...: one key per named group
    assert rec.schema["eef_pos"][0] == (3,) and rec.schema["agentview_image"][0] == (8, 8, 3)
    assert rec.attrs["robot_type"] == "toto_sim"


def test_command_line_errors(source, tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert convert_main(["export", str(source.path), str(existing), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert convert_main(["export", str(tmp_path / "missing.zarr"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "no trajectory store" in capsys.readouterr().err
    assert convert_main(["import", str(existing), str(tmp_path / "s.zarr"), "--quiet"]) == 2
    assert "not a LeRobotDataset directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        convert_main([])
    assert exit_info.value.code == 2
