import json
import shutil

import numpy as np
import pytest
import zarr

from pretrain.data import VideoSource
from pretrain.shards import PROGRESS_FILE, TokenShards, load_tokenizer, tokenize_sources
from tests.pretrain.helpers import CLIP, SIZE, STRIDE, make_shards
from toto_robot.store import has_checksum


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    return tmp, make_shards(tmp)


def test_shards_round_trip_the_tokenizer_ids(shards_dir):
    tmp, path = shards_dir
    tok = load_tokenizer(tmp / "tokenizer")
    src = VideoSource("videos", tmp / "videos", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    want = np.concatenate([tok.encode(np.stack(list(src.clips(i)))).numpy() for i in src.items()])
    shards = TokenShards(path, held_out=0.25)
    assert shards.kinds == {"videos": "video"} and shards.grid == SIZE // 8 and shards.clip_frames == CLIP
    n_train, n_held = shards.n_clips("videos"), shards.n_clips("videos", "held_out")
    assert n_train + n_held == len(want) and n_held == round(0.25 * len(want))
    np.testing.assert_array_equal(shards.clips("videos", np.arange(n_train)), want[:n_train])
    np.testing.assert_array_equal(shards.clips("videos", np.array([1, 0]), "held_out"), want[[n_train + 1, n_train]])
    assert zarr.open_group(path, mode="r")["videos"]["ids"].dtype == np.uint16
    assert has_checksum(zarr.open_group(path, mode="r")["videos"]["ids"])  # a CRC32C per chunk
    lazy = TokenShards(path, held_out=0.25, in_memory_bytes=0)  # read from zarr on demand, not loaded
    assert not isinstance(lazy.arrays["videos"], np.ndarray)
    pick = np.array([3, 0, 3, 1])
    np.testing.assert_array_equal(lazy.clips("videos", pick), want[pick])


def test_resume_after_a_crash_between_append_and_commit(shards_dir, tmp_path):
    tmp, path = shards_dir
    crashed = tmp_path / "crashed.zarr"
    shutil.copytree(path, crashed)
    progress = json.loads((crashed / PROGRESS_FILE).read_text())
    state = progress["videos"]
    ids = zarr.open_group(crashed, mode="a")["videos"]["ids"]
    per_video = ids.shape[0] // 4  # 4 videos of 24 frames: 3 clips each
    committed = 2 * per_video
    ids.resize((committed + 3, *ids.shape[1:]))  # rows past the commit, as a killed writer leaves them
    ids[committed:] = 7
    state.update(n_clips=committed, done=2, complete=False)  # two items were committed
    (crashed / PROGRESS_FILE).write_text(json.dumps(progress))
    with pytest.raises(ValueError, match="not finished"):
        TokenShards(crashed)
    src = VideoSource("videos", tmp / "videos", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    tokenize_sources([src], load_tokenizer(tmp / "tokenizer"), crashed, tokenizer_path=str(tmp / "tokenizer"),
                     progress=False)
    a, b = TokenShards(path, held_out=0), TokenShards(crashed, held_out=0)
    np.testing.assert_array_equal(a.arrays["videos"], b.arrays["videos"])


def test_resume_with_other_settings_is_refused(shards_dir, tmp_path):
    tmp, path = shards_dir
    src = VideoSource("videos", tmp / "videos", size=2 * SIZE, clip_frames=CLIP, stride=STRIDE)
    with pytest.raises(ValueError, match="same settings.*'grid', 'resolution'"):
        tokenize_sources([src], load_tokenizer(tmp / "tokenizer"), path, tokenizer_path=str(tmp / "tokenizer"),
                         progress=False)
    with pytest.raises(FileNotFoundError, match="toto-tokenize"):
        TokenShards(tmp_path)


def test_a_source_with_only_unreadable_files_is_an_error(tmp_path, shards_dir):
    tmp, _ = shards_dir
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"junk")
    src = VideoSource("v", tmp_path / "v", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    with pytest.raises(ValueError, match="expected at least one readable clip.*1 of 1 items unreadable"):
        tokenize_sources([src], load_tokenizer(tmp / "tokenizer"), tmp_path / "t.zarr",
                         tokenizer_path=str(tmp / "tokenizer"), progress=False)
