import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

from toto_robot.commands.convert import main as convert_main
from toto_robot.lerobot_io import SIDECAR, compare_stores, export_lerobot, import_lerobot
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
    schema = {
        "agentview_image": ((SIZE, SIZE, 3), "uint8"),
        "robot0_eef_pos": ((3,), "float32"),
        "action": ((7,), "float32"),
    }
    store = TrajectoryStore.create(path, schema, {"fps": 20, "env": "Lift", "camera": "agentview"})
    rng = np.random.default_rng(0)
    for i, length in enumerate(LENGTHS):
        data = {
            "agentview_image": smooth_frames(i, length),
            "robot0_eef_pos": rng.standard_normal((length, 3)).astype(np.float32),
            "action": rng.standard_normal((length, 7)).astype(np.float32),
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
    assert dataset.meta.features["observation.images.agentview_image"]["dtype"] == "video"
    assert dataset.meta.fps == 20

    back_path = tmp_path / "back.zarr"
    assert convert_main(["import", str(out), str(back_path), "--quiet"]) == 0
    back = TrajectoryStore.open(back_path)
    report = compare_stores(source, back)
    assert report["action"]["max_abs_diff"] == 0 and report["robot0_eef_pos"]["max_abs_diff"] == 0
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
    assert foreign.keys == source.keys
    assert foreign.attrs == {"fps": 20, "robot_type": None, "lerobot_repo_id": "someone/demos"}
    assert foreign.episode_meta(1) == {
        "task": "lift 1",
        "seed": None,
        "success": None,
        "source": "lerobot:someone/demos",
        "length": LENGTHS[1],
    }
    np.testing.assert_array_equal(foreign.episode(1)["action"], source.episode(1)["action"])


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
