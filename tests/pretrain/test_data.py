import json

import numpy as np
import pytest

from pretrain.data import (
    ImageSource,
    Mixture,
    SkipLog,
    Source,
    SourceError,
    VideoSource,
    ZarrSource,
    build_source,
    clip_indices,
    item_clips,
)
from tests.pretrain.helpers import CLIP, SIZE, STRIDE, gray_video, square_videos
from toto_robot.store import TrajectoryStore


def test_clip_indices_paper_default_and_edges():
    (clip,) = clip_indices(64, 16, 4)
    assert clip.tolist() == list(range(0, 64, 4))
    clips = clip_indices(200, 16, 4)  # extent 61: starts 0, 64, 128; a partial fourth span is dropped
    assert [c[0] for c in clips] == [0, 64, 128] and clips[-1][-1] == 188
    assert clip_indices(61, 16, 4)[0][-1] == 60 and len(clip_indices(124, 16, 4)) == 1
    assert clip_indices(10, 4, 4)[0].tolist() == [0, 4, 8, 9]  # short video: clamped to the last frame
    assert clip_indices(1, 3, 2)[0].tolist() == [0, 0, 0]
    assert clip_indices(0, 16, 4) == []


@pytest.mark.parametrize("n", [5, 23, 40])
def test_decoded_frames_are_the_ones_clip_indices_names(tmp_path, n):
    path = gray_video(tmp_path / "g.mp4", n)
    src = VideoSource("g", tmp_path, size=SIZE, clip_frames=CLIP, stride=STRIDE)
    got = [c.mean(axis=(1, 2, 3)) for c in src.clips(str(path))]
    want = [4.0 * i for i in clip_indices(n, CLIP, STRIDE)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() < 2.0, (g, w)  # H.264 at crf 10 keeps flat gray within a level or two


def test_resize_and_center_crop_non_square(tmp_path):
    frames = np.zeros((3, 48, 96, 3), np.uint8)
    frames[:, :, 24:72] = 255  # a white centre band half the width: the centre crop is all white
    from pretrain.data import write_video

    write_video(tmp_path / "wide.mp4", frames)
    (clip,) = VideoSource("w", tmp_path, size=16, clip_frames=2, stride=1).clips(str(tmp_path / "wide.mp4"))
    assert clip.shape == (2, 16, 16, 3) and clip.dtype == np.uint8
    assert clip.mean() > 240


class _Constant(Source):
    def __init__(self, name, weight, value):
        super().__init__(name, size=2, clip_frames=1, stride=1, weight=weight)
        self.value = value

    def _list_items(self):
        return ["a", "b"]

    def clips(self, item):
        yield np.full((1, 2, 2, 3), self.value, np.uint8)


def test_mixture_follows_the_paper_ratios():
    weights = {"imagenet": 0.2, "kinetics": 0.1, "ego4d": 0.1, "howto100m": 0.6}
    mix = Mixture([_Constant(n, w, i) for i, (n, w) in enumerate(weights.items())], seed=3)
    draws = np.array([next(mix)[0] for _ in range(5000)])
    for i, w in enumerate(weights.values()):
        assert abs((draws == i).mean() - w) < 0.02, ((draws == i).mean(), w)


def test_mixture_is_seeded():
    m1, m2 = (Mixture([_Constant("x", 1, 0), _Constant("y", 3, 1)], seed=5) for _ in range(2))
    assert [next(m1)[0] for _ in range(50)] == [next(m2)[0] for _ in range(50)]


def _folder_with_broken_files(tmp_path):
    square_videos(tmp_path, n=2, frames=12, size=32)
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 50)
    good = (tmp_path / "v0.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    return tmp_path


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    src = VideoSource("v", _folder_with_broken_files(tmp_path), size=SIZE, clip_frames=CLIP, stride=STRIDE)
    skips = SkipLog()
    clips = [c for item in src.items() for c in item_clips(src, item, skips, strict=False)]
    assert skips.counts() == {"v": 2}
    assert sorted(p.split("/")[-1] for p in skips.skipped["v"]) == ["garbage.mp4", "truncated.mp4"]
    assert len(clips) >= 2 and all(c.shape == (CLIP, SIZE, SIZE, 3) for c in clips)


def test_strict_mode_fails_on_the_first_corrupt_file(tmp_path):
    src = VideoSource("v", _folder_with_broken_files(tmp_path), size=SIZE, clip_frames=CLIP, stride=STRIDE)
    with pytest.raises(SourceError, match="garbage.mp4.*strict"):
        for item in src.items():
            list(item_clips(src, item, SkipLog(), strict=True))


def test_empty_and_missing_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="expected videos.*found nothing"):
        VideoSource("e", tmp_path / "empty", size=SIZE).items()
    with pytest.raises(SourceError, match="expected a directory of videos.*found nothing"):
        VideoSource("m", tmp_path / "missing", size=SIZE)
    with pytest.raises(SourceError, match="expected kind in"):
        build_source("x", {"kind": "movies", "root": str(tmp_path)}, 32, 4, 2)
    with pytest.raises(SourceError, match="unexpected keys \\['keys'\\]"):
        build_source("x", {"kind": "videos", "root": str(tmp_path), "keys": ["a"]}, 32, 4, 2)
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.mp4").write_bytes(b"junk")
    mix = Mixture([VideoSource("bad", only_bad, size=SIZE)], seed=0)
    with pytest.raises(SourceError, match="none of its 1 items could be read"):
        next(mix)


def test_ego4d_manifest_and_frame_folders(tmp_path):
    square_videos(tmp_path / "clips", n=3, frames=12, size=32)
    (tmp_path / "clips" / "v0.mp4").rename(tmp_path / "clips" / "uid-a.mp4")
    (tmp_path / "ego4d.json").write_text(json.dumps({"videos": [{"video_uid": "uid-a"}, {"video_uid": "gone"}]}))
    src = VideoSource("ego4d", tmp_path / "clips", manifest=tmp_path / "ego4d.json", size=SIZE,
                      clip_frames=CLIP, stride=STRIDE)
    assert [p.split("/")[-1] for p in src.items()] == ["uid-a.mp4", "gone.mp4"]
    skips = SkipLog()
    assert len([c for i in src.items() for c in item_clips(src, i, skips, False)]) >= 1
    assert skips.counts() == {"ego4d": 1}  # listed but missing: skipped and counted
    (tmp_path / "m.csv").write_text("path\nv1.mp4\n")
    assert VideoSource("c", tmp_path / "clips", manifest=tmp_path / "m.csv", size=SIZE).items()[0].endswith("v1.mp4")
    frames = tmp_path / "frames" / "episode"
    frames.mkdir(parents=True)
    from PIL import Image

    for i in range(7):
        Image.fromarray(np.full((20, 30, 3), 30 * i, np.uint8)).save(frames / f"f{i:03d}.jpg")
    fsrc = VideoSource("f", tmp_path / "frames", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    (clip,) = fsrc.clips(fsrc.items()[0])
    assert np.allclose(clip.mean(axis=(1, 2, 3)), [0, 60, 120, 180], atol=3)


def test_image_groups_and_zarr_cameras(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    isrc = ImageSource("im", tmp_path / "imgs", size=SIZE, clip_frames=4, stride=1)
    assert isrc.kind == "image" and len(isrc.items()) == 2  # 6 images -> 2 groups of 4 (the last wraps)
    second = next(isrc.clips(isrc.items()[1]))
    assert np.allclose(second.mean(axis=(1, 2, 3)), [160, 200, 0, 40], atol=1)
    store = TrajectoryStore.create(tmp_path / "s.zarr", schema={"cam_image": ((24, 24, 3), "uint8"),
                                                                "action": ((2,), "float32")})
    store.add_episode({"cam_image": np.zeros((9, 24, 24, 3), np.uint8), "action": np.zeros((9, 2), np.float32)},
                      {"task": "t", "seed": 0, "success": True, "source": "test"})
    zsrc = ZarrSource("robot", tmp_path / "s.zarr", size=SIZE, clip_frames=CLIP, stride=STRIDE)
    assert zsrc.items() == ["0/cam_image"]
    (clip,) = zsrc.clips("0/cam_image")
    assert clip.shape == (CLIP, SIZE, SIZE, 3)
    with pytest.raises(SourceError, match="expected image keys"):
        ZarrSource("robot", tmp_path / "s.zarr", keys=["action"], size=SIZE)
