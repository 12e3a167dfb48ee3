import numpy as np
import pytest

from envs.collect import collect, resume_seed, store_schema
from envs.experts import make_expert
from envs.random_policy import RandomPolicy
from envs.robosuite_env import EnvConfig
from toto_robot.store import TrajectoryStore


@pytest.mark.render
def test_collection_writes_a_valid_store_and_resumes(tmp_path):
    path = tmp_path / "lift.zarr"
    config = EnvConfig(task="Lift", cameras=("agentview", "robot0_eye_in_hand"), image_size=32)
    store = collect(path, make_expert("Lift"), config, n_episodes=2, progress=False)
    assert store.n_episodes == 2
    assert store.schema == {k: (tuple(s), np.dtype(d)) for k, (s, d) in store_schema(config).items()}

    store = TrajectoryStore.open(path)
    for i in range(2):
        meta, steps = store.episode_meta(i), store.episode(i)
        assert meta["seed"] == i and meta["success"] is True and meta["task"] == "lift the red cube"
        assert len(steps["action"]) == meta["length"] > 10
        assert steps["agentview_image"].shape == (meta["length"], 32, 32, 3)
        assert steps["agentview_image"].std() > 10  # a rendered scene, not a blank buffer
        assert np.abs(steps["action"]).max() <= 1.0
        assert steps["reward"][-1, 0] == 1.0 and steps["reward"][:-1].sum() == 0  # sparse: success on the last step
        assert steps["robot0_eef_pos"][-1, 2] > steps["robot0_eef_pos"][:, 2].min() + 0.01  # grasped, then lifted
        # privileged object state: the cube is in the gripper and rises, and object_pos is part of the object vector
        assert steps["object"].shape == (meta["length"], 10) and steps["object_pos"].shape == (meta["length"], 3)
        assert steps["object_pos"][-1, 2] > steps["object_pos"][0, 2] + 0.003  # lifted
        assert np.linalg.norm(steps["object_pos"][-1] - steps["robot0_eef_pos"][-1]) < 0.03  # in the gripper
        np.testing.assert_array_equal(steps["object"][:, :3], steps["object_pos"])

    store = collect(path, make_expert("Lift"), config, n_episodes=3, progress=False)  # resume: one more
    assert store.n_episodes == 3 and store.episode_meta(2)["seed"] == 2
    with pytest.raises(ValueError, match="collected with env settings"):
        collect(path, make_expert("Lift"), EnvConfig(task="Lift", cameras=("agentview",), image_size=32),
                n_episodes=4, progress=False)


def test_failed_episodes_kept_only_on_request(tmp_path):
    config = EnvConfig(task="Lift", cameras=(), horizon=8)
    store = collect(tmp_path / "a.zarr", RandomPolicy(), config, n_episodes=2, keep_failed=True, progress=False)
    assert [store.episode_meta(i)["success"] for i in range(2)] == [False, False]
    assert store.episode(0)["action"].shape == (8, 7)
    with pytest.raises(ValueError, match="gave up after 3 episodes with 0/1 stored"):
        collect(tmp_path / "b.zarr", RandomPolicy(), config, n_episodes=1, max_attempts=3, progress=False)
    # the failed attempts are remembered: a second run starts at the next seed
    assert TrajectoryStore.open(tmp_path / "b.zarr").attrs["next_seed"] == 3


def test_resume_after_a_kill_between_commit_and_next_seed_does_not_repeat_a_seed(tmp_path):
    config = EnvConfig(task="Lift", cameras=(), horizon=4)
    store = collect(tmp_path / "a.zarr", RandomPolicy(), config, n_episodes=2, keep_failed=True, progress=False)
    store.update_attrs({"next_seed": 1})  # as if killed after storing seed 1 but before recording next_seed
    assert resume_seed(TrajectoryStore.open(tmp_path / "a.zarr")) == 2
    store = collect(tmp_path / "a.zarr", RandomPolicy(), config, n_episodes=3, keep_failed=True, progress=False)
    assert [store.episode_meta(i)["seed"] for i in range(3)] == [0, 1, 2]


def test_collection_seeds_stay_below_evaluation_seeds(tmp_path):
    with pytest.raises(ValueError, match="seed_start"):
        collect(tmp_path / "c.zarr", RandomPolicy(), EnvConfig(cameras=()), n_episodes=1, seed_start=100_000)


@pytest.mark.parametrize("task", ["Lift", "Stack", "PickPlaceCan", "Door"])
def test_object_state_matches_the_declared_schema(task, tmp_path):
    config = EnvConfig(task=task, cameras=(), horizon=3)
    store = collect(tmp_path / "s.zarr", RandomPolicy(), config, n_episodes=1, keep_failed=True, progress=False)
    ep = store.episode(0)
    dim = store_schema(config)["object"][0][0]
    assert ep["object"].shape == (3, dim) and ep["object_pos"].shape == (3, 3)
    assert np.isfinite(ep["object"]).all() and np.abs(ep["object_pos"]).max() > 0.01


def test_a_store_without_object_state_is_refused_not_mixed(tmp_path):
    config = EnvConfig(task="Lift", cameras=(), horizon=4)
    path = tmp_path / "old.zarr"
    schema = {k: v for k, v in store_schema(config).items() if k not in ("object", "object_pos")}
    collect(path, RandomPolicy(), config, n_episodes=1, keep_failed=True, progress=False)
    # an older store: the same env attributes, no object keys
    old = TrajectoryStore.open(path)
    attrs = old.attrs
    old_path = tmp_path / "older.zarr"
    TrajectoryStore.create(old_path, schema, attrs)
    with pytest.raises(ValueError, match=r"older\.zarr: expected the object-state keys .* collect into a new output"):
        collect(old_path, RandomPolicy(), config, n_episodes=1, keep_failed=True, progress=False)
    assert TrajectoryStore.open(old_path).n_episodes == 0  # left untouched
