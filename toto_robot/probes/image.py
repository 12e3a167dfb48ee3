"""Image classification data: an ImageFolder-style directory, or scikit-learn's bundled digits offline.

Images go through the project's frame preprocessing (`preprocess_frame`: centre square, box resampling) to
the tokenizer's size, and become clips of one frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits

from toto_robot.frames import preprocess_frame
from toto_robot.probes.data import ClassificationData, class_folder_files, split_rows, stratified_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_image(path: str | Path, image_size: int) -> np.ndarray:
    """An image file -> (image_size, image_size, 3) uint8."""
    try:
        with Image.open(path) as im:
            frame = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path}: cannot be read ({exc})") from exc
    return preprocess_frame(frame, image_size)


def image_folder(root: str | Path, image_size: int, val_ratio: float = 0.25, seed: int = 0) -> ClassificationData:
    """`root/<class>/<image>` (or `root/train/...` and `root/val/...`) -> labelled one-frame clips."""
    files, labels, classes, split = class_folder_files(root, IMAGE_EXTENSIONS, "image folder")
    train, test = split_rows(labels, split, val_ratio, seed)
    clips = np.stack([read_image(f, image_size) for f in files])[:, None]  # (N, 1, S, S, 3)
    return ClassificationData(str(root), clips, labels, classes, train, test)


def digits(image_size: int, val_ratio: float = 0.25, seed: int = 0) -> ClassificationData:
    """scikit-learn's bundled 8x8 grey digits (1797 images, 10 classes), grey to RGB and enlarged to
    image_size by the frame preprocessing (an enlargement replicates pixels: 64 px -> one digit pixel per
    8x8 token patch)."""
    d = load_digits()
    grey = np.round(d.images * (255 / 16)).astype(np.uint8)  # (N, 8, 8), values 0..16 -> 0..255
    frames = np.stack([preprocess_frame(np.repeat(g[:, :, None], 3, axis=2), image_size) for g in grey])
    labels = d.target.astype(np.int64)
    train, test = stratified_split(labels, val_ratio, seed)
    return ClassificationData("digits (scikit-learn, bundled)", frames[:, None], labels, [str(c) for c in range(10)],
                              train, test)
