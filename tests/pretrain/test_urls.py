"""Sources and token shards behind fsspec URLs: the in-memory file system stands in for an object store
(nothing leaves the machine), and each result is compared with the same data on local disk."""

import json
import uuid

import fsspec
import numpy as np
import pytest
import zarr
from PIL import Image

from pretrain import urls
from pretrain.data import ImageSource, SourceError, VideoSource, build_source
from pretrain.shards import INDEX_FILE, TokenShards, load_tokenizer, save_tokenizer, tokenize_sources
from tests.pretrain.helpers import CLIP, SIZE, STRIDE, gray_video, square_videos, tiny_tokenizer


@pytest.fixture
def memory_root():
    """A fresh folder on fsspec's in-memory file system (one per process), removed after the test."""
    fs = fsspec.filesystem("memory")
    root = f"/{uuid.uuid4().hex}"
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _upload(local, url) -> str:
    fs, path = urls.url_to_fs(url)
    fs.put(str(local), path, recursive=True)
    return url


def _local_tree(tmp):
    """Videos, a folder of frames, images and two manifests: every kind of file a source lists."""
    videos = square_videos(tmp / "data" / "videos", n=2, frames=12, size=32)
    gray_video(videos / "deep" / "g.mp4", 9)
    frames = videos / "episode"
    frames.mkdir()
    for i in range(5):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(frames / f"f{i:03d}.jpg")
    (videos / "notes.txt").write_text("not a video")
    images = tmp / "data" / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(np.full((24, 24, 3), 30 * i, np.uint8)).save(images / f"{i}.png")
    (tmp / "data" / "m.json").write_text(json.dumps({"videos": [{"path": "v1.mp4"}, {"video_uid": "v0"}]}))
    (tmp / "data" / "m.csv").write_text("path\ndeep/g.mp4\n")
    return tmp / "data"


def _same_source(local, remote, local_root, remote_root):
    """Same items (as paths below the root), same keys, same decoded clips."""
    items, remote_items = local.items(), remote.items()
    assert [urls.relative(i, local_root) for i in items] == [urls.relative(i, remote_root) for i in remote_items]
    assert all(i.startswith(remote_root + "/") for i in remote_items)
    assert [local.item_key(i) for i in items] == [remote.item_key(i) for i in remote_items]
    for a, b in zip(items, remote_items, strict=True):
        clips, remote_clips = list(local.clips(a)), list(remote.clips(b))
        assert len(clips) == len(remote_clips) > 0
        for c, d in zip(clips, remote_clips):
            np.testing.assert_array_equal(c, d)  # the same decoder on the same bytes


def test_a_source_on_the_memory_file_system_lists_and_decodes_like_its_local_copy(tmp_path, memory_root):
    data = _local_tree(tmp_path)
    remote = _upload(data, memory_root + "/data")
    kw = {"size": SIZE, "clip_frames": CLIP, "stride": STRIDE}
    local_videos, remote_videos = VideoSource("v", data / "videos", **kw), VideoSource("v", remote + "/videos/", **kw)
    assert len(local_videos.items()) == 4  # v0, v1, deep/g and the folder of frames; notes.txt is not listed
    _same_source(local_videos, remote_videos, str(data / "videos"), remote + "/videos")
    for manifest in ("m.json", "m.csv"):
        a = VideoSource("m", data / "videos", manifest=data / manifest, **kw)
        b = VideoSource("m", remote + "/videos", manifest=f"{remote}/{manifest}", **kw)
        _same_source(a, b, str(data / "videos"), remote + "/videos")
    a, b = ImageSource("i", data / "images", **kw), ImageSource("i", remote + "/images", **kw)
    assert len(a.items()) == 2
    assert [a.item_key(i) for i in a.items()] == [b.item_key(i) for i in b.items()] == ["0.png", "4.png"]
    for x, y in zip(a.items(), b.items()):
        np.testing.assert_array_equal(next(a.clips(x)), next(b.clips(y)))
    # file:// is the local file system: the same items, as plain paths
    assert VideoSource("v", f"file://{data / 'videos'}", **kw).items() == local_videos.items()
    with pytest.raises(SourceError, match="expected a directory of videos at memory://.*/nothing, found nothing"):
        VideoSource("v", memory_root + "/nothing", **kw)


def test_shards_on_the_memory_file_system_hold_the_same_tokens_as_local(tmp_path, memory_root):
    videos = square_videos(tmp_path / "videos", n=4, frames=24, size=48)
    save_tokenizer(tmp_path / "tokenizer", tiny_tokenizer())
    tok = load_tokenizer(tmp_path / "tokenizer")
    remote_videos = _upload(videos, memory_root + "/videos")
    kw = {"size": SIZE, "clip_frames": CLIP, "stride": STRIDE}
    common = {"tokenizer_path": str(tmp_path / "tokenizer"), "progress": False, "shards_per_source": 2, "workers": 0}
    local = tmp_path / "tokens.zarr"
    tokenize_sources([VideoSource("videos", videos, **kw)], tok, local, **common)
    remote = memory_root + "/tokens.zarr"
    summary = tokenize_sources([VideoSource("videos", remote_videos, **kw)], tok, remote, **common)
    assert summary["videos"]["clips"] == 12 and summary["videos"]["items"] == 4
    fs, path = urls.url_to_fs(remote)
    assert fs.isfile(f"{path}/zarr.json") and fs.isfile(f"{path}/videos/00001/zarr.json")
    a, b = TokenShards(local, held_out=0.25), TokenShards(remote, held_out=0.25)
    assert b.path == remote and a.attrs == b.attrs
    assert json.loads(urls.read_text(f"{remote}/{INDEX_FILE}")) == json.loads((local / INDEX_FILE).read_text())
    for split in ("train", "held_out"):
        n = a.n_clips("videos", split)
        assert n == b.n_clips("videos", split) > 0
        np.testing.assert_array_equal(a.clips("videos", np.arange(n), split), b.clips("videos", np.arange(n), split))
    lazy = TokenShards(remote, held_out=0.25, in_memory_bytes=0)  # chunks read from the memory store on demand
    assert not any(isinstance(p, np.ndarray) for p in lazy.parts["videos"])
    np.testing.assert_array_equal(lazy.clips("videos", np.array([3, 0])), a.clips("videos", np.array([3, 0])))

    # A writer killed between an append and its commit, on the remote store: the next run resumes from the commit.
    fs.rm(f"{path}/{INDEX_FILE}")
    progress = f"{remote}/progress/videos/00001.json"
    state = json.loads(urls.read_text(progress))
    first = state["item_clips"][0]
    state.update(done=1, n_clips=first, item_clips=state["item_clips"][:1], complete=False)
    urls.write_text(progress, json.dumps(state))
    ids = zarr.open_group(remote, mode="a")["videos"]["00001"]
    ids.resize((first + 2, *ids.shape[1:]))
    ids[first:] = 7  # rows past the commit
    with pytest.raises(ValueError, match="not finished"):
        TokenShards(remote)
    tokenize_sources([VideoSource("videos", remote_videos, **kw)], tok, remote, **common)
    resumed = TokenShards(remote, held_out=0)
    n = resumed.n_clips("videos")
    np.testing.assert_array_equal(resumed.clips("videos", np.arange(n)), TokenShards(local, held_out=0).clips(
        "videos", np.arange(n)))


def test_a_bad_url_is_a_clear_one_line_error(tmp_path, memory_root, monkeypatch, capsys):
    message = "foo://bucket/videos: unknown file system protocol 'foo'; expected a local path or a URL"
    for make in (lambda: VideoSource("v", "foo://bucket/videos", size=SIZE),
                 lambda: ImageSource("i", "foo://bucket/videos", size=SIZE),
                 lambda: TokenShards("foo://bucket/videos")):
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="simplecache::foo://b/v: unknown file system protocol 'foo'"):
        urls.url_to_fs("simplecache::foo://b/v")
    with pytest.raises(SourceError, match="expected a local path to a trajectory store, got the URL memory://"):
        build_source("robot", {"kind": "zarr", "root": memory_root + "/demos.zarr"}, SIZE, CLIP, STRIDE)
    with pytest.raises(SourceError, match="expected a local folder to write its videos to"):
        build_source("gen", {"kind": "generated", "root": memory_root + "/gen"}, SIZE, CLIP, STRIDE)
    from toto_robot.commands.tokenize import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["toto-tokenize", f"work_dir={tmp_path / 'work'}", "data=folder",
                                     "data.sources.videos.root=foo://bucket/videos"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"toto-tokenize: error: {message}")
