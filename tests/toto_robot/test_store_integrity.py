"""Nothing lost, nothing silent: racing creators, damaged chunks, torn tails, stuck writers, NaN data."""

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

import toto_robot.store as store_module
from toto_robot.commands.store import main as toto_store
from toto_robot.store import TrajectoryStore, has_checksum, lock_path

SCHEMA = {"agentview_image": ((8, 8, 3), "uint8"), "action": ((7,), "float32")}
OTHER_SCHEMA = {"agentview_image": ((8, 8, 3), "uint8"), "action": ((6,), "float32")}


def random_episode(seed: int, length: int, schema=SCHEMA) -> dict[str, np.ndarray]:
    """Random uint8 images: incompressible, so Blosc stores their chunks as they are."""
    rng = np.random.default_rng(seed)
    return {"agentview_image": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (length, schema["action"][0][0])).astype(np.float32)}


def meta(seed: int) -> dict:
    return {"task": "lift", "seed": seed, "success": True, "source": "test"}


def fill(path: Path, lengths: list[int], **kw) -> TrajectoryStore:
    store = TrajectoryStore.create(path, SCHEMA, {"fps": 20}, **kw)
    for i, length in enumerate(lengths):
        store.add_episode(random_episode(i, length), meta(i))
    return store


def assert_replay_buffer_layout(path: Path) -> None:
    """The invariants diffusion_policy's ReplayBuffer asserts when it opens a store, read with plain zarr."""
    root = zarr.open_group(path, mode="r")
    ends = root["meta"]["episode_ends"][:]
    assert ends.dtype == np.int64 and (np.diff(ends) > 0).all() and ends[0] > 0
    for key in root["data"].array_keys():
        assert root["data"][key].shape[0] == ends[-1], key
    lengths = [e["length"] for e in root["meta"].attrs["episodes"]]
    np.testing.assert_array_equal(ends, np.cumsum(lengths))


# ------------------------------------------------------------------ creation race
def _race(path_names: list[str], schema: dict, barrier, results) -> None:
    """One racer: for each new path, wait for the others, then open_or_create and append an episode."""
    for name in path_names:
        barrier.wait()
        try:
            store = TrajectoryStore.open_or_create(name, schema, {"fps": 20})
            store.add_episode(random_episode(os.getpid(), 5, schema), meta(os.getpid() % 1000))
            results.put((name, "ok", schema["action"][0][0]))
        except ValueError as exc:
            results.put((name, "error", str(exc)))
        except Exception as exc:  # noqa: BLE001  (any other error is the bug under test: report it)
            results.put((name, "crash", f"{type(exc).__name__}: {exc}"))


def test_processes_racing_to_create_one_path_all_get_one_complete_store(tmp_path):
    """Three racers want one schema, a fourth another: each succeeds or gets the schema error."""
    ctx = multiprocessing.get_context("spawn")
    paths = [str(tmp_path / f"race{r}.zarr") for r in range(3)]  # three rounds in the same processes
    barrier, results = ctx.Barrier(4), ctx.Queue()
    schemas = [SCHEMA, SCHEMA, SCHEMA, OTHER_SCHEMA]
    procs = [ctx.Process(target=_race, args=(paths, s, barrier, results)) for s in schemas]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(len(procs) * len(paths))]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert not [g for g in got if g[1] == "crash"], got
    for name in paths:
        outcomes = [g for g in got if g[0] == name]
        ok = [g for g in outcomes if g[1] == "ok"]
        assert ok and len({g[2] for g in ok}) == 1, outcomes  # everyone who got in shares one schema
        for g in outcomes:
            if g[1] == "error":
                assert "holds the schema" in g[2] and "but the caller needs" in g[2], g[2]
        store = TrajectoryStore.open(name)
        assert store.n_episodes == len(ok) and store.verify().ok
        assert store.schema["action"][0] == (ok[0][2],)
        assert_replay_buffer_layout(Path(name))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*(Path(n).name for n in paths), *(lock_path(n).name for n in paths)]
    ), "nothing half-built left beside the stores"


def test_open_or_create_opens_an_existing_store_and_names_both_schemas(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [3])
    store = TrajectoryStore.open_or_create(path, SCHEMA, {"ignored": "only used on creation"})
    assert store.n_episodes == 1 and store.attrs == {"fps": 20}
    with pytest.raises(ValueError, match=r"holds the schema \{agentview_image: \(8, 8, 3\) uint8, action: \(7,\) "
                                         r"float32\}, but the caller needs \{.*action: \(6,\) float32\}"):
        TrajectoryStore.open_or_create(path, OTHER_SCHEMA)
    replaced = TrajectoryStore.create(path, OTHER_SCHEMA, overwrite=True)  # built aside, then swapped in
    assert replaced.n_episodes == 0 and TrajectoryStore.open(path).schema["action"][0] == (6,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "s.zarr.lock"]


HOLDER = textwrap.dedent(
    """
    import os, signal, sys
    from toto_robot.store import store_lock
    with store_lock(sys.argv[1]):
        print("LOCKED", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)   # a writer stopped while it holds the lock
    """
)


def test_a_stopped_writer_does_not_block_others_silently(tmp_path):
    path = tmp_path / "s.zarr"
    fill(path, [2])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(TimeoutError, match=rf"waiting for the write lock .*held by PID {holder.pid} \(stopped\)"):
            TrajectoryStore.open(path, mode="a", lock_timeout=0.3)
        assert TrajectoryStore.open(path).n_episodes == 1  # readers take no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    TrajectoryStore.open(path, mode="a", lock_timeout=5).add_episode(random_episode(9, 2), meta(9))  # released


# ------------------------------------------------------------------ damaged chunks
def _damage(path: Path, zarr_format: int, how: str) -> Path:
    """Truncate or flip one byte of the chunk (format 3: the shard) holding episode 1's images."""
    if zarr_format == 2:
        file = path / "data" / "agentview_image" / "2.0.0.0"  # steps 8..11: episode 1 (steps 6..13)
    else:
        file = path / "data" / "agentview_image" / "c" / "0" / "0" / "0" / "0"  # the one shard
    raw = bytearray(file.read_bytes())
    if how == "truncate":
        raw = raw[: len(raw) // 2] if zarr_format == 2 else raw[:200] + raw[300:]
    else:
        raw[len(raw) // 2] ^= 0xFF
    file.write_bytes(bytes(raw))
    return file


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_chunk_is_an_error_naming_file_key_and_episode(tmp_path, capsys, zarr_format, how):
    path = tmp_path / "s.zarr"
    fill(path, [6, 8], zarr_format=zarr_format)
    assert toto_store(["verify", str(path)]) == 0
    file = _damage(path, zarr_format, how)
    store = TrajectoryStore.open(path)
    if zarr_format == 2:
        np.testing.assert_array_equal(store.episode(0)["agentview_image"], random_episode(0, 6)["agentview_image"])
        where = r"steps 8\.\.11, episode 1\)"
    else:
        where = r"steps 0\.\.13, episodes 0\.\.1\)"  # one shard holds both episodes
    message = rf"{file}: chunk \d+ of key 'data/agentview_image' \({where} is damaged: expected .* uint8 with its checksum"
    with pytest.raises(ValueError, match=message):
        store.episode(1)
    capsys.readouterr()
    assert toto_store(["verify", str(path)]) == 2
    out, err = capsys.readouterr()
    assert str(file) in out and "checksum" in out and "verify failed: 1 problems" in err


def test_a_store_written_before_checksums_verifies_with_a_note(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "checksummed", lambda zarr_format, compressor: {"compressors": compressor})
    path = tmp_path / "old.zarr"
    fill(path, [3, 4])
    store = TrajectoryStore.open(path)
    assert not has_checksum(store.array("action"))
    assert toto_store(["verify", str(path)]) == 0
    assert "3 of 3 arrays have no chunk checksums (written before checksums" in capsys.readouterr().out


# ------------------------------------------------------------------ torn tail and repair
def test_repair_cuts_a_torn_tail_back_to_what_replay_buffer_accepts(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    fill(path, [4, 5])
    # what a writer killed mid-append leaves: its first key's steps written, episode_ends not yet
    action = zarr.open_group(path, mode="a")["data"]["action"]
    action.resize((12, 7))
    action[9:] = 1.0
    assert TrajectoryStore.open(path).n_episodes == 2  # this class reads only committed episodes
    with pytest.raises(AssertionError):
        assert_replay_buffer_layout(path)  # ... but third-party readers see mismatched lengths
    assert toto_store(["verify", str(path)]) == 2
    assert "data/action has 12 steps but episode_ends[-1] is 9" in capsys.readouterr().out
    assert toto_store(["repair", str(path)]) == 0
    assert "cut data/action from 12 to 9 steps" in capsys.readouterr().out
    assert_replay_buffer_layout(path)
    assert toto_store(["verify", str(path)]) == 0
    assert toto_store(["repair", str(path)]) == 0
    assert "nothing to repair" in capsys.readouterr().out


# ------------------------------------------------------------------ not a store
def _not_a_folder_store(path: Path) -> None:
    (path / "notes").mkdir(parents=True)


def _without_episode_ends(path: Path) -> None:
    fill(path, [3])
    shutil.rmtree(path / "meta" / "episode_ends")


def _without_a_data_key(path: Path) -> None:
    fill(path, [3])
    shutil.rmtree(path / "data" / "action")


@pytest.mark.parametrize("make, message", [
    (_not_a_folder_store, r"is not a trajectory store: expected a Zarr group .* found \['notes'\]"),
    (_without_episode_ends, r"expected the array meta/episode_ends .* found \[\]"),
    (_without_a_data_key, r"expected the array data/action .* found data/ holding \['agentview_image'\]"),
], ids=["folder", "no-episode-ends", "no-data-key"])
def test_opening_what_is_not_a_complete_store_says_what_is_missing(tmp_path, capsys, make, message):
    path = tmp_path / "s.zarr"
    make(path)
    for mode in ("r", "a"):
        with pytest.raises(ValueError, match=message):
            TrajectoryStore.open(path, mode=mode)
    assert toto_store(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toto-store: error: ") and err.count("\n") == 1


def test_info_lists_keys_and_codecs(tmp_path, capsys):
    fill(tmp_path / "s.zarr", [3])
    assert toto_store(["info", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "1 episodes, 3 steps" in out and "action: (7,) float32, 1024 steps a chunk, CRC32 > Blosc" in out
    with pytest.raises(SystemExit) as exit_:
        toto_store(["check", str(tmp_path / "s.zarr")])
    assert exit_.value.code == 2


# ------------------------------------------------------------------ NaN refused by training
def test_training_refuses_a_nan_action_before_saving_anything(tmp_path):
    from policies.bc import build_policy
    from policies.train import TrainConfig, train_bc

    proprio = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
    schema = {k: ((d,), "float32") for k, d in proprio.items()} | {"action": ((7,), "float32"),
                                                                   "object": ((5,), "float32")}
    rng = np.random.default_rng(0)

    def make(path, nan_episode=None):
        store = TrajectoryStore.create(path, schema, {"fps": 20})
        for e in range(3):
            data = {k: rng.normal(size=(6, s[0])).astype(np.float32) for k, (s, _) in schema.items()}
            if e == nan_episode:
                data["action"][4, 2] = np.nan
            store.add_episode(data, meta(e))
        return path

    node = {"backbone": "state", "head": "mlp", "chunk": 2, "n_action_steps": 1, "hidden": 16}
    cfg = TrainConfig(steps=2, batch_size=4, warmup=1, eval_every=2, log_every=1)
    policy = lambda: build_policy(node, None, (), 64, low_dim_sizes={"object": 5, **proprio})
    train_bc(policy(), make(tmp_path / "clean.zarr"), cfg, tmp_path / "clean", progress=False)
    assert (tmp_path / "clean" / "last").is_dir()  # the same run on finite data trains and saves

    bad = make(tmp_path / "nan.zarr", nan_episode=1)
    with pytest.raises(ValueError, match=rf"{bad}: key 'action' of episode 1 holds 1 non-finite values "
                                         r"\(first: nan at step 4\)"):
        train_bc(policy(), bad, cfg, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan").exists()
