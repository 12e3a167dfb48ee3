import hashlib
import inspect
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from toto_robot.store import TrajectoryStore

H = W = 8
SCHEMA = {
    "agentview_image": ((H, W, 3), "uint8"),
    "robot0_eef_pos": ((3,), "float32"),
    "action": ((7,), "float32"),
}


def make_episode(index: int, length: int) -> dict[str, np.ndarray]:
    """Deterministic episode whose every value identifies the episode and the step."""
    t = np.arange(length)
    return {
        "agentview_image": ((index * 7 + t[:, None, None, None] + np.zeros((1, H, W, 3))) % 256).astype(
            np.uint8
        ),
        "robot0_eef_pos": (index * 1000.0 + t[:, None] + np.array([0.1, 0.2, 0.3])).astype(np.float32),
        "action": (index * 1000.0 + t[:, None] * np.ones(7)).astype(np.float32),
    }


def make_meta(index: int) -> dict:
    return {"task": "lift", "seed": index, "success": index % 2 == 0, "source": "test"}


def fill(path: Path, lengths: list[int], **create_kwargs) -> TrajectoryStore:
    store = TrajectoryStore.create(path, SCHEMA, {"fps": 20, "env": "Lift"}, **create_kwargs)
    for i, length in enumerate(lengths):
        store.add_episode(make_episode(i, length), make_meta(i))
    return store


def assert_intact(store: TrajectoryStore, lengths: list[int]) -> None:
    assert store.n_episodes == len(lengths)
    np.testing.assert_array_equal(store.episode_ends, np.cumsum(lengths))
    for i, length in enumerate(lengths):
        got, want = store.episode(i), make_episode(i, length)
        for key in SCHEMA:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"episode {i} key {key}")
        assert store.episode_meta(i) == {**make_meta(i), "length": length}


def snapshot(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in path.rglob("*")
        if p.is_file()
    }


# ------------------------------------------------------------------ layout and round trip
def test_layout_is_diffusion_policy_replay_buffer(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [5, 3, 4])
    root = zarr.open_group(path, mode="r")  # a plain zarr client, as diffusion_policy uses
    assert sorted(root.group_keys()) == ["data", "meta"]
    assert sorted(root["data"].array_keys()) == sorted(SCHEMA)
    ends = root["meta"]["episode_ends"]
    assert ends.dtype == np.int64
    np.testing.assert_array_equal(ends[:], [5, 8, 12])
    for key, (shape, dtype) in SCHEMA.items():
        array = root["data"][key]
        assert array.dtype == np.dtype(dtype)
        assert array.shape == (12, *shape)
        assert array.chunks[1:] == shape, "chunked along time only"
    assert root["data"]["agentview_image"].chunks[0] == 4
    assert root["data"]["action"].chunks[0] == 1024
    for key, shuffle in (("agentview_image", 0), ("action", 2)):  # no shuffle for images, bit-shuffle else
        zarray = json.loads((path / "data" / key / ".zarray").read_text())
        assert zarray["zarr_format"] == 2
        assert zarray["compressor"] == {
            "id": "blosc",
            "cname": "zstd",
            "clevel": 5,
            "shuffle": shuffle,
            "blocksize": 0,
        }
        # a CRC32 checksum per chunk, in the config numcodecs 0.10.2 (diffusion_policy's pin) parses
        assert zarray["filters"] == [{"id": "crc32"}]


def test_round_trip_meta_and_attrs(tmp_path):
    lengths = [5, 1, 4]
    fill(tmp_path / "s.zarr", lengths)
    store = TrajectoryStore.open(tmp_path / "s.zarr")
    assert_intact(store, lengths)
    assert store.attrs == {"fps": 20, "env": "Lift"}
    assert store.keys == tuple(SCHEMA)
    assert store.image_keys == ("agentview_image",)
    assert store.episode_range(1) == (5, 6)
    assert store.episode(-1)["action"].shape == (4, 7)
    with pytest.raises(IndexError, match="out of range"):
        store.episode(3)
    with pytest.raises(PermissionError, match="read-only"):
        store.add_episode(make_episode(3, 2), make_meta(3))


def test_zarr_format_3_with_shards(tmp_path):
    lengths = [6, 5]
    fill(tmp_path / "s.zarr", lengths, zarr_format=3)
    store = TrajectoryStore.open(tmp_path / "s.zarr", mode="a")
    assert store.zarr_format == 3
    store.add_episode(make_episode(2, 3), make_meta(2))
    assert_intact(TrajectoryStore.open(tmp_path / "s.zarr"), [6, 5, 3])
    array = zarr.open_group(tmp_path / "s.zarr", mode="r")["data"]["agentview_image"]
    assert array.shards[0] == 256 and array.chunks[0] == 4


def test_update_attrs_and_existing_path(tmp_path):
    store = fill(tmp_path / "s.zarr", [2])
    store.update_attrs({"cameras": ["agentview"]})
    assert TrajectoryStore.open(tmp_path / "s.zarr").attrs == {
        "fps": 20,
        "env": "Lift",
        "cameras": ["agentview"],
    }
    with pytest.raises(FileExistsError):
        TrajectoryStore.create(tmp_path / "s.zarr", SCHEMA)
    with pytest.raises(ValueError, match="not a toto-trajectory-store"):
        zarr.open_group(tmp_path / "other.zarr", mode="w")
        TrajectoryStore.open(tmp_path / "other.zarr")


# ------------------------------------------------------------------ statistics
def test_stats_match_numpy_and_go_stale(tmp_path):
    store = fill(tmp_path / "s.zarr", [5, 3])
    with pytest.raises(ValueError, match="no statistics"):
        _ = store.stats
    store.compute_stats()
    stats = TrajectoryStore.open(tmp_path / "s.zarr").stats
    pos = np.concatenate([make_episode(0, 5)["robot0_eef_pos"], make_episode(1, 3)["robot0_eef_pos"]]).astype(
        np.float64
    )
    np.testing.assert_allclose(stats["robot0_eef_pos"]["mean"], pos.mean(0))
    np.testing.assert_allclose(stats["robot0_eef_pos"]["std"], pos.std(0), rtol=1e-6)
    np.testing.assert_array_equal(stats["robot0_eef_pos"]["min"], pos.min(0))
    np.testing.assert_array_equal(stats["robot0_eef_pos"]["max"], pos.max(0))
    images = np.concatenate([make_episode(0, 5)["agentview_image"], make_episode(1, 3)["agentview_image"]])
    assert stats["agentview_image"]["mean"].shape == (3,)
    np.testing.assert_allclose(stats["agentview_image"]["mean"], images.reshape(-1, 3).mean(0))
    store.add_episode(make_episode(2, 2), make_meta(2))
    with pytest.raises(ValueError, match="cover 2 episodes but the store has 3"):
        _ = store.stats


# ------------------------------------------------------------------ bad input
def _bad_inputs():
    good = make_episode(9, 4)
    yield "mismatched lengths", {**good, "action": good["action"][:3]}, make_meta(9), "same number of steps"
    yield "unknown key", {**good, "gripper": good["action"]}, make_meta(9), r"unknown \['gripper'\]"
    missing = {k: v for k, v in good.items() if k != "action"}
    yield "missing key", missing, make_meta(9), r"missing \['action'\]"
    yield (
        "wrong dtype",
        {**good, "action": good["action"].astype(np.float64)},
        make_meta(9),
        "dtype float32, got float64",
    )
    yield (
        "wrong shape",
        {**good, "action": good["action"][:, :6]},
        make_meta(9),
        r"shape \(T, 7\), got \(4, 6\)",
    )
    yield "image not hwc", {**good, "agentview_image": good["agentview_image"][..., 0]}, make_meta(9), "shape"
    yield "empty episode", {k: v[:0] for k, v in good.items()}, make_meta(9), "at least one step"
    yield "meta missing", good, {"task": "lift", "seed": 1, "source": "x"}, r"missing \['success'\]"
    yield "meta wrong type", good, {**make_meta(9), "seed": "one"}, r"meta\['seed'\]"
    yield "meta bool seed", good, {**make_meta(9), "seed": True}, r"meta\['seed'\]"
    yield "meta wrong length", good, {**make_meta(9), "length": 5}, "length'] is 5 but the arrays have 4"
    yield "meta not json", good, {**make_meta(9), "extra": object()}, "JSON-serializable"


@pytest.mark.parametrize(
    "data,meta,message", [c[1:] for c in _bad_inputs()], ids=[c[0] for c in _bad_inputs()]
)
def test_bad_input_raises_and_leaves_store_unchanged(tmp_path, data, meta, message):
    store = fill(tmp_path / "s.zarr", [3, 2])
    before = snapshot(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match=message):
        store.add_episode(data, meta)
    assert snapshot(tmp_path / "s.zarr") == before
    assert_intact(TrajectoryStore.open(tmp_path / "s.zarr"), [3, 2])


def test_non_array_raises_type_error(tmp_path):
    store = fill(tmp_path / "s.zarr", [3])
    before = snapshot(tmp_path / "s.zarr")
    good = make_episode(1, 2)
    with pytest.raises(TypeError, match=r"data\['action'\] must be a numpy array, got list"):
        store.add_episode({**good, "action": good["action"].tolist()}, make_meta(1))
    with pytest.raises(TypeError, match="episode meta must be a dict"):
        store.add_episode(good, ["lift"])
    assert snapshot(tmp_path / "s.zarr") == before


@pytest.mark.parametrize(
    "schema,message",
    [
        ({}, "non-empty"),
        ({"a/b": ((3,), "float32")}, "without '/'"),
        ({"a": ((0,), "float32")}, "positive ints"),
        ({"a": ((3,), "complex64")}, "dtype must be one of"),
        ({"a": (3, "float32")}, "shape must be a tuple"),
        ({"a": ((3,),)}, "shape_without_time, dtype"),
    ],
)
def test_bad_schema(tmp_path, schema, message):
    with pytest.raises(ValueError, match=message):
        TrajectoryStore.create(tmp_path / "s.zarr", schema)


# ------------------------------------------------------------------ atomicity and concurrency
WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import zarr
    from toto_robot.store import TrajectoryStore
    H = W = {size}

    # HELPERS
    path, first, count, pause_after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    original = zarr.Array.__setitem__
    def setitem(self, selection, value):
        original(self, selection, value)
        if pause_after != "none" and self.path.endswith(pause_after):
            print("TORN", flush=True)   # the parent kills us here, mid-append
            time.sleep(60)
    zarr.Array.__setitem__ = setitem
    store = TrajectoryStore.open(path, mode="a")
    for i in range(first, first + count):
        store.add_episode(make_episode(i, 20 + i % 5), make_meta(i))
        print("ADDED", i, flush=True)
    """
)


def start_writer(tmp_path: Path, path: Path, first: int, count: int, pause_after: str = "none"):
    script = tmp_path / "writer.py"
    # The writer builds the same episodes as this module does, from the same source.
    helpers = inspect.getsource(make_episode) + "\n" + inspect.getsource(make_meta)
    script.write_text(WRITER.format(size=H).replace("# HELPERS", helpers))
    cmd = [sys.executable, str(script), str(path), str(first), str(count), pause_after]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("pause_after", ["data/agentview_image", "data/action", "meta/episode_ends"])
def test_sigkill_mid_append_leaves_earlier_episodes(tmp_path, pause_after):
    path = tmp_path / "s.zarr"
    lengths = [20, 21]
    fill(path, lengths)
    writer = start_writer(tmp_path, path, first=2, count=1, pause_after=pause_after)
    assert writer.stdout.readline().strip() == "TORN"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    raw = zarr.open_group(path, mode="r")
    assert raw["data"]["agentview_image"].shape[0] > sum(lengths), "the kill must land after data was written"
    reader = TrajectoryStore.open(path)
    assert_intact(reader, lengths)

    repaired = TrajectoryStore.open(path, mode="a")
    raw = zarr.open_group(path, mode="r")
    assert all(raw["data"][k].shape[0] == sum(lengths) for k in SCHEMA)
    np.testing.assert_array_equal(raw["meta"]["episode_ends"][:], np.cumsum(lengths))
    assert not list(path.rglob("*.partial"))
    repaired.add_episode(make_episode(2, 22), make_meta(2))
    assert_intact(TrajectoryStore.open(path), [*lengths, 22])


def test_sigkill_at_arbitrary_moments(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [])
    expected = []
    for delay in (0.05, 0.15):
        writer = start_writer(tmp_path, path, first=len(expected), count=1000)
        for line in writer.stdout:
            if line.startswith("ADDED"):
                break
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        reader = TrajectoryStore.open(path)
        assert reader.n_episodes >= len(expected) + 1
        expected = [20 + i % 5 for i in range(reader.n_episodes)]
        assert_intact(reader, expected)
    assert_intact(TrajectoryStore.open(path, mode="a"), expected)


def test_concurrent_reader_sees_only_complete_episodes(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [])
    writer = start_writer(tmp_path, path, first=0, count=12)
    reader = TrajectoryStore.open(path)
    seen = set()
    while True:
        done = writer.poll() is not None
        reader.refresh()
        seen.add(reader.n_episodes)
        assert_intact(reader, [20 + i % 5 for i in range(reader.n_episodes)])
        if done:
            break
    assert writer.returncode == 0
    assert reader.n_episodes == 12
    assert len(seen) > 2, f"the reader should have observed the store growing, saw counts {sorted(seen)}"


def test_two_writers_append_to_one_store(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [])
    writers = [start_writer(tmp_path, path, first=first, count=4) for first in (0, 100)]
    for writer in writers:
        writer.communicate(timeout=60)
        assert writer.returncode == 0
    store = TrajectoryStore.open(path)
    assert store.n_episodes == 8
    for i in range(8):
        index = store.episode_meta(i)["seed"]
        want = make_episode(index, 20 + index % 5)
        got = store.episode(i)
        for key in SCHEMA:
            np.testing.assert_array_equal(got[key], want[key])


def test_append_at_an_index_writes_each_episode_once(tmp_path):
    """add_episode(index=i): written when the store holds i episodes; None (store unchanged) when another writer
    already appended episode i; an error past the end."""
    path = tmp_path / "s.zarr"
    fill(path, [3, 2])
    store = TrajectoryStore.open(path, mode="a")
    before = snapshot(path)
    assert store.add_episode(make_episode(1, 4), make_meta(1), index=1) is None
    assert snapshot(path) == before
    with pytest.raises(ValueError, match="expected to append episode 3, but the store holds 2 episodes"):
        store.add_episode(make_episode(3, 4), make_meta(3), index=3)
    assert snapshot(path) == before
    assert store.add_episode(make_episode(2, 4), make_meta(2), index=2) == 2
    assert_intact(TrajectoryStore.open(path), [3, 2, 4])
