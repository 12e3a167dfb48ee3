"""Labelled clips for classification probes, and the class-folder layout users' data comes in.

An image is a clip of one frame, so image and video classification share `ClassificationData`. Frames are
already the encoder's square (toto_robot.frames.preprocess_frame) when they get here.

Class folders (ImageFolder style): `root/<class>/<file>`, the held-out rows drawn per class (`val_ratio`,
a fixed seed); or `root/train/<class>/<file>` and `root/val/<class>/<file>`, the split as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val")


@dataclass
class ClassificationData:
    name: str  # what the data is, for the results ("digits (scikit-learn, bundled)", a folder's path, ...)
    clips: np.ndarray  # (N, T, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64 class indices
    classes: list[str]
    train: np.ndarray  # row indices
    test: np.ndarray

    def __post_init__(self):
        if self.clips.ndim != 5 or self.clips.dtype != np.uint8 or len(self.clips) != len(self.labels):
            raise ValueError(f"{self.name}: expected (N, T, S, S, 3) uint8 clips and N labels, got clips "
                             f"{self.clips.dtype} {self.clips.shape} and {len(self.labels)} labels")
        if len(self.train) == 0 or len(self.test) == 0:
            raise ValueError(f"{self.name}: expected training and held-out rows, got {len(self.train)} and "
                             f"{len(self.test)}")

    def summary(self) -> dict:
        return {"data": self.name, "classes": self.classes, "n_train": len(self.train), "n_test": len(self.test),
                "frames_per_clip": int(self.clips.shape[1]), "image_size": int(self.clips.shape[2]),
                "chance": float(np.bincount(self.labels[self.test]).max() / len(self.test))}


def stratified_split(labels: np.ndarray, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, held out), `val_ratio` of every class held out."""
    if not 0 < val_ratio < 1:
        raise ValueError(f"val_ratio: expected in (0, 1), got {val_ratio}")
    rows = np.arange(len(labels))
    try:
        train, test = train_test_split(rows, test_size=val_ratio, random_state=seed, stratify=labels)
    except ValueError as exc:  # too few rows of a class for both sides
        raise ValueError(f"held-out split of {len(labels)} rows, {val_ratio} of each of {len(np.unique(labels))} "
                         f"classes: {exc}") from exc
    return np.sort(train), np.sort(test)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def class_folder_files(root: str | Path, extensions: tuple[str, ...], what: str
                       ) -> tuple[list[Path], np.ndarray, list[str], np.ndarray | None]:
    """(files, labels, class names, split) of a class-folder layout; split is None without train/ and val/,
    else an array of "train" / "val" per file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root}: expected a directory, found none")
    layout = f"{root}/<class>/<file> (or {root}/train/<class>/ and {root}/val/<class>/)"
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    parts = ({s: _class_dirs(d) for s, d in split_dirs.items()} if len(split_dirs) == len(SPLITS)
             else {None: _class_dirs(root)})
    found = {(s, d.name): _files(d, extensions) for s, dirs in parts.items() for d in dirs}
    found = {k: v for k, v in found.items() if v}
    classes = sorted({name for _, name in found})
    if len(classes) < 2:
        have = f"class {classes[0]!r} only" if classes else "no class folder holding such files"
        raise ValueError(f"{what} {root}: expected one sub-folder per class holding {'/'.join(extensions)} files, "
                         f"at least two classes, as {layout}; found {have}")
    files, labels, split = [], [], []
    for (s, name), paths in sorted(found.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        files += paths
        labels += [classes.index(name)] * len(paths)
        split += [s] * len(paths)
    return files, np.asarray(labels, np.int64), classes, None if None in parts else np.asarray(split)


def split_rows(labels: np.ndarray, split: np.ndarray | None, val_ratio: float, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """The given split when there is one, else a stratified one."""
    if split is None:
        return stratified_split(labels, val_ratio, seed)
    return np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
