import av
import numpy as np

from toto_robot.image_metrics import psnr_uint8
from toto_robot.video import write_mp4


def _read(path):
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_write_mp4_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    for t in range(6):
        frames[t, 8:24, 4 + 4 * t:20 + 4 * t] = (200, 80, 40)  # a square moving right
    path = write_mp4(tmp_path / "videos" / "clip.mp4", list(frames), fps=10, crf=10)
    back = _read(path)
    assert back.shape == frames.shape  # (T, H, W, 3): height and width not swapped
    assert psnr_uint8(back, frames) > 30
