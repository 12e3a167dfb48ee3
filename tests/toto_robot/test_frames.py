"""One frame-preprocessing function (toto_robot/frames.py): what it does, and that every path that brings a
camera frame to the encoder (pretraining's videos, images and stores, the robot's observations) goes through
it, so the same frame gives the same pixels and the same tokens everywhere."""

import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image

from envs.robot import LeRobotAdapter, RobotMapping
from pretrain.data import ImageSource, VideoSource, ZarrSource, load_image, video_frame
from tests.toto_robot.helpers import tiny_models
from toto_robot.frames import preprocess_frame, preprocess_frames
from toto_robot.store import TrajectoryStore

SIZE = 64  # the tiny tokenizer's resolution


def smooth_frame(h: int = 91, w: int = 150, seed: int = 0) -> np.ndarray:
    """A non-square (H, W, 3) uint8 image: a few random low-frequency waves per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(-6, 6, 2)
            img[..., c] += rng.uniform(0.5, 1) * np.sin(2 * np.pi * (fy * y + fx * x) + rng.uniform(0, 2 * np.pi))
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * 255).astype(np.uint8)


def test_centre_crop_comes_first_and_drops_the_odd_column_on_the_right():
    frame = np.zeros((40, 61, 3), np.uint8)
    frame[:, :10], frame[:, 10:50], frame[:, 50:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    # the centred square is columns 10..49 (21 columns off: 10 on the left, 11 on the right)
    for size in (40, 20, 16):
        out = preprocess_frame(frame, size)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        assert (out == (0, 255, 0)).all(), size
    tall = np.swapaxes(frame, 0, 1).copy()  # (61, 40, 3): the odd row comes off the bottom
    assert (preprocess_frame(tall, 20) == (0, 255, 0)).all()


def test_box_resampling_averages_blocks():
    frame = (np.random.default_rng(1).random((48, 48, 3)) * 255).astype(np.uint8)
    out = preprocess_frame(frame, 16).astype(float)
    blocks = frame.reshape(16, 3, 16, 3, 3).mean(axis=(1, 3))  # (16, 16, 3): each output pixel's 3x3 footprint
    assert np.abs(out - blocks).max() <= 1.0  # Pillow rounds after each of its two passes
    checker = np.indices((32, 32)).sum(axis=0) % 2 * 255  # one-pixel checkerboard: averages to flat grey
    grey = preprocess_frame(np.repeat(checker[..., None], 3, axis=2).astype(np.uint8), 16)
    assert np.isin(grey, (127, 128)).all()


def test_square_frame_at_size_is_unchanged_and_results_are_new_arrays():
    frame = smooth_frame(SIZE, SIZE)
    out = preprocess_frame(frame, SIZE)
    assert np.array_equal(out, frame) and not np.shares_memory(out, frame) and out.flags.writeable
    assert preprocess_frame(smooth_frame(), SIZE).flags.writeable


def test_batched_variant_is_the_single_frame_function_per_frame():
    frames = np.stack([smooth_frame(seed=s) for s in range(6)]).reshape(2, 3, 91, 150, 3)
    out = preprocess_frames(frames, 32)
    assert out.shape == (2, 3, 32, 32, 3)
    for b in range(2):
        for t in range(3):
            assert np.array_equal(out[b, t], preprocess_frame(frames[b, t], 32))
    assert preprocess_frames(frames[:0], 32).shape == (0, 3, 32, 32, 3)


@pytest.mark.parametrize("frame, size, match", [
    (np.zeros((8, 8, 3), np.float32), 4, r"expected an \(H, W, 3\) uint8 array, got float32"),
    (np.zeros((8, 8), np.uint8), 4, r"got uint8 \(8, 8\)"),
    (np.zeros((8, 8, 4), np.uint8), 4, r"got uint8 \(8, 8, 4\)"),
    (np.zeros((0, 8, 3), np.uint8), 4, "expected a non-empty image"),
    (np.zeros((8, 8, 3), np.uint8), 0, "size: expected a positive integer, got 0"),
    (np.zeros((8, 8, 3), np.uint8), 4.0, "size: expected a positive integer, got 4.0"),
])
def test_bad_inputs_are_named(frame, size, match):
    with pytest.raises(ValueError, match=match):
        preprocess_frame(frame, size)


def test_preprocessing_imports_without_torch():
    code = "import sys, toto_robot.frames; assert 'torch' not in sys.modules, 'torch was imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


class _OneCameraRobot:
    """The part of a LeRobot `Robot` the adapter reads: one camera delivering `image`, one action."""

    name = "one_camera"

    def __init__(self, image: np.ndarray):
        self.image = image
        self.observation_features = {"wrist": image.shape}
        self.action_features = {"a": float}

    def get_observation(self) -> dict:
        return {"wrist": self.image.copy()}


def _lossless_video(path, frame: np.ndarray, n: int = 2):
    """PNG frames in a QuickTime file: decoding gives back `frame` bit for bit (H.264 would not)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("png", rate=30)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
        for _ in range(n):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_one_frame_gives_the_same_pixels_and_tokens_through_every_path(tmp_path):
    frame = smooth_frame()  # (91, 150, 3): non-square, and an odd excess to crop
    paths: dict[str, np.ndarray] = {"preprocess_frame": preprocess_frame(frame, SIZE)}

    # pretraining: a video file (decoded at its own size, then preprocessed), a folder of frames, an image
    # source, a trajectory store
    (tmp_path / "videos").mkdir()
    video = _lossless_video(tmp_path / "videos" / "clip.mov", frame)
    (clip,) = VideoSource("v", tmp_path / "videos", size=SIZE, clip_frames=2, stride=1).clips(str(video))
    paths["pretrain video"] = clip[1]
    with av.open(str(video)) as container:
        paths["pretrain video_frame"] = video_frame(next(container.decode(video=0)), SIZE)
    (tmp_path / "images").mkdir()
    Image.fromarray(frame).save(tmp_path / "images" / "0.png")
    paths["pretrain load_image"] = load_image(tmp_path / "images" / "0.png", SIZE)
    images = ImageSource("i", tmp_path / "images", size=SIZE, clip_frames=1, stride=1)
    paths["pretrain images"] = next(images.clips(images.items()[0]))[0]
    store = TrajectoryStore.create(tmp_path / "s.zarr", schema={"cam_image": (frame.shape, "uint8"),
                                                                "action": ((1,), "float32")})
    store.add_episode({"cam_image": frame[None], "action": np.zeros((1, 1), np.float32)},
                      {"task": "t", "seed": 0, "success": True, "source": "test"})
    (clip,) = ZarrSource("z", tmp_path / "s.zarr", size=SIZE, clip_frames=1, stride=1).clips("0/cam_image")
    paths["pretrain zarr"] = clip[0]

    # the robot: the LeRobot adapter's observation (what deployment hands the policy, unresized after this)
    adapter = LeRobotAdapter(_OneCameraRobot(frame), RobotMapping(cameras={"wrist_image": "wrist"}, action=["a"],
                                                                 image_size=SIZE))
    paths["robot observation"] = adapter.get_observation().data["wrist_image"]

    reference = paths["preprocess_frame"]
    assert reference.shape == (SIZE, SIZE, 3) and reference.dtype == np.uint8
    for name, pixels in paths.items():
        assert pixels.shape == reference.shape and pixels.dtype == np.uint8, name
        assert np.array_equal(pixels, reference), f"{name}: differs in {(pixels != reference).sum()} values"

    tok, _ = tiny_models()
    tok.eval()
    ids = tok.encode(torch.from_numpy(np.stack(list(paths.values())))[:, None])  # (paths, 1, h, w)
    for name, got in zip(paths, ids, strict=True):
        assert torch.equal(got, ids[0]), name

    # the comparison can fail: the resampling the image path used before (bicubic after a short-side resize)
    # gives other pixels for this frame
    scale = SIZE / min(frame.shape[:2])
    w, h = round(frame.shape[1] * scale), SIZE
    bicubic = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.BICUBIC))
    left = (w - SIZE) // 2
    assert not np.array_equal(bicubic[:, left:left + SIZE], reference)
