import pickle

import numpy as np
import pytest
import torch

from toto_robot.sampler import WindowDataset, split_episodes, train_val_datasets
from toto_robot.store import TrajectoryStore


@pytest.fixture
def store(tmp_path) -> TrajectoryStore:
    """Two episodes (4 and 3 steps) whose values are 100 * episode + step."""
    store = TrajectoryStore.create(
        tmp_path / "s.zarr", {"img": ((2, 2, 3), "uint8"), "action": ((2,), "float32")}
    )
    for episode, length in enumerate([4, 3]):
        t = 100 * episode + np.arange(length)
        img = np.broadcast_to(t[:, None, None, None], (length, 2, 2, 3)).astype(np.uint8)
        action = np.stack([t, -t], axis=1).astype(np.float32)
        store.add_episode(
            {"img": img, "action": action}, {"task": "t", "seed": 0, "success": None, "source": "s"}
        )
    return store


def as_rows(dataset: WindowDataset) -> list[tuple]:
    rows = []
    for i in range(len(dataset)):
        item = dataset[i]
        rows.append((dataset.window(i), item["img"][:, 0, 0, 0].tolist(), item["action"][:, 0].tolist()))
    return rows


# Golden windows for horizons img=2, action=4, pad_before=1, pad_after=3 (diffusion_policy's
# SequenceSampler gives the same): (episode, start), image steps, action steps.
GOLDEN = [
    ((0, -1), [0, 0], [0, 0, 1, 2]),
    ((0, 0), [0, 1], [0, 1, 2, 3]),
    ((0, 1), [1, 2], [1, 2, 3, 3]),
    ((0, 2), [2, 3], [2, 3, 3, 3]),
    ((0, 3), [3, 3], [3, 3, 3, 3]),
    ((1, -1), [100, 100], [100, 100, 101, 102]),
    ((1, 0), [100, 101], [100, 101, 102, 102]),
    ((1, 1), [101, 102], [101, 102, 102, 102]),
    ((1, 2), [102, 102], [102, 102, 102, 102]),
]


@pytest.mark.parametrize("in_memory", ["none", "low_dim", "all", ["action"], ["img", "action"]])
def test_padding_golden_values(store, in_memory):
    dataset = WindowDataset(store, {"img": 2, "action": 4}, pad_before=1, pad_after=3, in_memory=in_memory)
    assert as_rows(dataset) == GOLDEN
    item = dataset[0]
    assert item["img"].dtype == torch.uint8 and item["img"].shape == (2, 2, 2, 3)
    assert item["action"].dtype == torch.float32 and item["action"].shape == (4, 2)
    np.testing.assert_array_equal(item["action"][:, 1], [0, 0, -1, -2])


def test_no_padding_and_short_episodes(store):
    dataset = WindowDataset(store, {"img": 1, "action": 4})
    # Episode 0 has exactly one unpadded window of 4; episode 1 (3 steps) has none.
    assert as_rows(dataset) == [((0, 0), [0], [0, 1, 2, 3])]


def test_windows_follow_episode_selection(store):
    dataset = WindowDataset(store, {"img": 2, "action": 4}, pad_before=1, pad_after=3, episodes=[1])
    assert as_rows(dataset) == GOLDEN[5:]


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_episodes(20, val_ratio=0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert sorted([*train, *val]) == list(range(20))
    again = split_episodes(20, val_ratio=0.2, seed=3)
    np.testing.assert_array_equal(val, again[1])
    other = [split_episodes(20, val_ratio=0.2, seed=s)[1].tolist() for s in range(4, 8)]
    assert any(o != val.tolist() for o in other), "the seed must change the split"
    assert split_episodes(3, val_ratio=0.01)[1].size == 1, "at least one validation episode"
    assert split_episodes(3, val_ratio=0.99)[0].size == 1, "at least one training episode"
    assert split_episodes(5, val_ratio=0.0)[1].size == 0


def test_train_val_datasets_use_disjoint_episodes(store):
    train, val = train_val_datasets(store, {"img": 1, "action": 2}, val_ratio=0.5, seed=0)
    train_eps = {train.window(i)[0] for i in range(len(train))}
    val_eps = {val.window(i)[0] for i in range(len(val))}
    assert train_eps and val_eps and not train_eps & val_eps


def test_pickles_for_dataloader_workers(store):
    dataset = WindowDataset(store.path, {"img": 2, "action": 4}, pad_before=1, pad_after=3)
    copy = pickle.loads(pickle.dumps(dataset))
    assert as_rows(copy) == GOLDEN


def test_stats_for_dataset_keys(store):
    store.compute_stats()
    dataset = WindowDataset(store.path, {"action": 2})
    assert set(dataset.stats) == {"action"}
    np.testing.assert_allclose(dataset.stats["action"]["max"], [102, 0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"horizons": {}}, "at least one key"),
        ({"horizons": {"state": 2}}, r"lacks; it has \['img', 'action'\]"),
        ({"horizons": {"img": 0}}, "positive int"),
        ({"horizons": {"img": 2}, "pad_before": 2}, r"pad_before must be an int in \[0, 1\]"),
        ({"horizons": {"img": 2}, "pad_after": -1}, "pad_after must be"),
        ({"horizons": {"img": 2}, "episodes": [0, 2]}, r"distinct indices in \[0, 2\)"),
        ({"horizons": {"img": 2}, "episodes": [1, 1]}, "distinct"),
        ({"horizons": {"img": 2}, "in_memory": "gpu"}, "in_memory"),
        ({"horizons": {"img": 2}, "in_memory": ["action"]}, r"in_memory names keys \['action'\]"),
    ],
)
def test_bad_arguments(store, kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowDataset(store, **kwargs)
