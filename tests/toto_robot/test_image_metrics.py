import numpy as np
import pytest
import torch

from toto_robot.image_metrics import psnr_uint8


def test_psnr_uint8():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    assert psnr_uint8(a, b) == float("inf")
    b[0, 0, 0, 0] = 255  # mse = 255^2 / 96
    assert psnr_uint8(a, b) == pytest.approx(10 * np.log10(96))
    assert psnr_uint8(torch.from_numpy(a).float(), b) == pytest.approx(10 * np.log10(96))  # no uint8 overflow
    with pytest.raises(ValueError, match="one shape"):
        psnr_uint8(a, b[:1])
