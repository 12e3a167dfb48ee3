import json
import shutil

import numpy as np
import pytest
import zarr

from pretrain.data import VideoSource
from pretrain.shards import (
    FORMAT_NAME,
    INDEX_FILE,
    LEGACY_PROGRESS_FILE,
    TokenShards,
    held_out_items,
    load_tokenizer,
    shard_ranges,
    tokenize_sources,
)
from tests.pretrain.helpers import CLIP, SIZE, STRIDE, make_shards
from toto_robot.store import has_checksum


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    return tmp, make_shards(tmp)


def _source(tmp, size=SIZE):
    return VideoSource("videos", tmp / "videos", size=size, clip_frames=CLIP, stride=STRIDE)


def _per_item(tmp) -> list[np.ndarray]:
    """What the tokenizer gives each item, encoded on its own: the shards must hold exactly this."""
    tok, src = load_tokenizer(tmp / "tokenizer"), _source(tmp)
    return [tok.encode(np.stack(list(src.clips(i)))).numpy() for i in src.items()]


def test_shards_round_trip_the_tokenizer_ids_with_a_per_item_split(shards_dir):
    tmp, path = shards_dir
    per_item = _per_item(tmp)
    src = _source(tmp)
    shards = TokenShards(path, held_out=0.25)
    assert shards.kinds == {"videos": "video"} and shards.grid == SIZE // 8 and shards.clip_frames == CLIP
    held = held_out_items([src.item_key(i) for i in src.items()], [len(p) for p in per_item], 0.25)
    assert 0 < held.sum() < len(held)  # at least one video on each side
    train = np.concatenate([p for p, h in zip(per_item, held) if not h])
    held_clips = np.concatenate([p for p, h in zip(per_item, held) if h])
    assert shards.n_clips("videos") == len(train) and shards.n_clips("videos", "held_out") == len(held_clips)
    np.testing.assert_array_equal(shards.clips("videos", np.arange(len(train))), train)
    np.testing.assert_array_equal(shards.clips("videos", np.array([1, 0]), "held_out"), held_clips[[1, 0]])
    array = zarr.open_group(path, mode="r")["videos"]["00000"]
    assert array.dtype == np.uint16 and has_checksum(array)  # a CRC32C per chunk
    lazy = TokenShards(path, held_out=0.25, in_memory_bytes=0)  # read from zarr on demand, not loaded
    assert not any(isinstance(a, np.ndarray) for a in lazy.parts["videos"])
    pick = np.array([3, 0, 3, 1])
    np.testing.assert_array_equal(lazy.clips("videos", pick), train[pick])


def test_the_split_is_a_property_of_each_item():
    keys = [f"clip_{i:03d}.mp4" for i in range(200)]
    held = held_out_items(keys, np.ones(200), 0.1)
    assert 10 <= held.sum() <= 30  # about a tenth
    # The same items whatever else is listed (another sharding, a source that grew).
    assert (held_out_items(keys[50:], np.ones(150), 0.1) == held[50:]).all()
    grouped = held_out_items(["0", "0", "1", "1"], np.ones(4), 0.5)  # two cameras of an episode stay together
    assert grouped[0] == grouped[1] and grouped[2] == grouped[3] and grouped[0] != grouped[2]
    assert not held_out_items(keys[:5], np.ones(5), 0.0).any()
    assert shard_ranges(10, 4) == [range(2), range(2, 5), range(5, 7), range(7, 10)]
    assert shard_ranges(3, 64) == [range(1), range(1, 2), range(2, 3)]


def test_resume_after_a_crash_between_append_and_commit(shards_dir, tmp_path):
    tmp, path = shards_dir
    tok, src = load_tokenizer(tmp / "tokenizer"), _source(tmp)
    whole = tmp_path / "whole.zarr"
    tokenize_sources([src], tok, whole, tokenizer_path=str(tmp / "tokenizer"), progress=False, shards_per_source=2)
    crashed = tmp_path / "crashed.zarr"
    shutil.copytree(whole, crashed)
    (crashed / INDEX_FILE).unlink()
    progress_path = crashed / "progress" / "videos" / "00001.json"
    state = json.loads(progress_path.read_text())
    first = state["item_clips"][0]
    state.update(done=1, n_clips=first, item_clips=state["item_clips"][:1], complete=False)  # one item committed
    progress_path.write_text(json.dumps(state))
    ids = zarr.open_group(crashed, mode="a")["videos"]["00001"]
    ids.resize((first + 2, *ids.shape[1:]))  # rows past the commit, as a killed writer leaves them
    ids[first:] = 7
    with pytest.raises(ValueError, match="not finished"):
        TokenShards(crashed)
    tokenize_sources([src], tok, crashed, tokenizer_path=str(tmp / "tokenizer"), progress=False, shards_per_source=2)
    a, b, c = TokenShards(path, held_out=0), TokenShards(crashed, held_out=0), TokenShards(whole, held_out=0)
    n = a.n_clips("videos")
    np.testing.assert_array_equal(a.clips("videos", np.arange(n)), b.clips("videos", np.arange(n)))
    np.testing.assert_array_equal(b.clips("videos", np.arange(n)), c.clips("videos", np.arange(n)))
    assert json.loads((crashed / INDEX_FILE).read_text()) == json.loads((whole / INDEX_FILE).read_text())


def test_resume_with_other_settings_or_items_is_refused(shards_dir, tmp_path):
    tmp, path = shards_dir
    tok = load_tokenizer(tmp / "tokenizer")
    with pytest.raises(ValueError, match="same settings.*'grid', 'resolution'"):
        tokenize_sources([_source(tmp, 2 * SIZE)], tok, path, tokenizer_path=str(tmp / "tokenizer"), progress=False)
    with pytest.raises(ValueError, match="same settings.*'shards_per_source'"):
        tokenize_sources([_source(tmp)], tok, path, tokenizer_path=str(tmp / "tokenizer"), progress=False,
                         shards_per_source=3)
    fewer = tmp_path / "videos"
    shutil.copytree(tmp / "videos", fewer)
    (fewer / "v0.mp4").unlink()
    copy = tmp_path / "tokens.zarr"
    shutil.copytree(path, copy)
    with pytest.raises(ValueError, match="listed 4 items when this store was started, now 3"):
        tokenize_sources([VideoSource("videos", fewer, size=SIZE, clip_frames=CLIP, stride=STRIDE)], tok, copy,
                         tokenizer_path=str(tmp / "tokenizer"), progress=False)
    with pytest.raises(FileNotFoundError, match="toto-tokenize"):
        TokenShards(tmp_path)


def _legacy_store(path, ids: np.ndarray, complete: bool = True):
    """A store as toto-tokenize wrote it before shards: one array per source and progress.json."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs.update({"format": FORMAT_NAME, "clip_frames": CLIP, "grid": SIZE // 8, "resolution": SIZE})
    root.create_group("videos").create_array("ids", data=ids, chunks=(64, *ids.shape[1:]))
    (path / LEGACY_PROGRESS_FILE).write_text(json.dumps(
        {"videos": {"kind": "video", "n_clips": len(ids), "done": 4, "skipped": [], "complete": complete}}))


def test_stores_of_the_earlier_layout_still_read_and_are_not_extended(shards_dir, tmp_path):
    tmp, _ = shards_dir
    ids = np.concatenate(_per_item(tmp)).astype(np.uint16)  # 12 clips
    _legacy_store(tmp_path / "old.zarr", ids)
    old = TokenShards(tmp_path / "old.zarr", held_out=0.25)
    assert (old.n_clips("videos"), old.n_clips("videos", "held_out")) == (9, 3)  # its split: the last quarter
    np.testing.assert_array_equal(old.clips("videos", np.arange(3), "held_out"), ids[9:])
    np.testing.assert_array_equal(old.clips("videos", np.array([8, 0])), ids[[8, 0]])
    tok = load_tokenizer(tmp / "tokenizer")
    summary = tokenize_sources([_source(tmp)], tok, tmp_path / "old.zarr", tokenizer_path="t", progress=False)
    assert summary["videos"]["clips"] == 12  # complete: nothing to do
    _legacy_store(tmp_path / "half.zarr", ids, complete=False)
    with pytest.raises(ValueError, match="older toto-tokenize.*re-tokenize into a new directory"):
        tokenize_sources([_source(tmp)], tok, tmp_path / "half.zarr", tokenizer_path="t", progress=False)


def test_a_source_with_only_unreadable_files_is_an_error(tmp_path, shards_dir):
    tmp, _ = shards_dir
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"junk")
    src = VideoSource("v", tmp_path / "v", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    with pytest.raises(ValueError, match="expected at least one readable clip.*1 of 1 items unreadable"):
        tokenize_sources([src], load_tokenizer(tmp / "tokenizer"), tmp_path / "t.zarr",
                         tokenizer_path=str(tmp / "tokenizer"), progress=False)
