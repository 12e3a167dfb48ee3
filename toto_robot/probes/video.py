"""Video classification data: class folders of videos, a CSV manifest, or generated clips offline.

Layouts:
- class folders: `root/<class>/<video>` (or `root/train/<class>/...` and `root/val/<class>/...`);
- a CSV manifest, Kinetics style: columns `path,label[,split]` (paths relative to the manifest's folder), or
  Kinetics' own `label,youtube_id,time_start,time_end[,split]`, a row's file being
  `<video_dir>/[<label>/]<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`. A `split` of "train" trains,
  any other value ("val", "validate", "test") is held out; without the column a stratified split is drawn.

Videos are read with PyAV; `clip_frames` frames, one in every `frame_stride`, are taken from the middle of
each (evenly spaced over the whole video when it is shorter), each through the project's frame
preprocessing. Offline, `moving_shapes` generates clips whose label is the direction a square moves in: its
start is uniform and it wraps around the frame edges, so no single frame tells the label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np

from toto_robot.frames import preprocess_frame
from toto_robot.probes.data import ClassificationData, class_folder_files, split_rows, stratified_split

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
DIRECTIONS = ("right", "left", "down", "up")
_STEPS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)


def frame_indices(n_total: int, clip_frames: int, frame_stride: int) -> np.ndarray:
    span = (clip_frames - 1) * frame_stride + 1
    if n_total >= span:
        start = (n_total - span) // 2
        return start + frame_stride * np.arange(clip_frames)
    return np.round(np.linspace(0, n_total - 1, clip_frames)).astype(int)


def read_clip(path: str | Path, image_size: int, clip_frames: int, frame_stride: int) -> np.ndarray:
    """A video file -> (clip_frames, image_size, image_size, 3) uint8."""
    try:
        with av.open(str(path)) as container:
            frames = [preprocess_frame(f.to_ndarray(format="rgb24"), image_size)
                      for f in container.decode(video=0)]
    except (av.FFmpegError, IndexError) as exc:  # IndexError: a file with no video stream
        raise ValueError(f"video {path}: cannot be read ({exc})") from exc
    if not frames:
        raise ValueError(f"video {path}: expected frames, decoded none")
    return np.stack([frames[i] for i in frame_indices(len(frames), clip_frames, frame_stride)])


def _clips(files, image_size, clip_frames, frame_stride) -> np.ndarray:
    return np.stack([read_clip(f, image_size, clip_frames, frame_stride) for f in files])


def video_folder(root: str | Path, image_size: int, clip_frames: int, frame_stride: int, val_ratio: float = 0.25,
                 seed: int = 0) -> ClassificationData:
    files, labels, classes, split = class_folder_files(root, VIDEO_EXTENSIONS, "video folder")
    train, test = split_rows(labels, split, val_ratio, seed)
    return ClassificationData(str(root), _clips(files, image_size, clip_frames, frame_stride), labels, classes,
                              train, test)


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def _manifest_path(row: dict, base: Path) -> Path:
    if "path" in row:
        path = Path(row["path"])
        return path if path.is_absolute() else base / path
    name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}.mp4"
    nested = base / row["label"] / name
    return nested if nested.is_file() else base / name


def video_manifest(manifest: str | Path, image_size: int, clip_frames: int, frame_stride: int,
                   video_dir: str | Path | None = None, val_ratio: float = 0.25, seed: int = 0) -> ClassificationData:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"video manifest {manifest}: expected a CSV file, found none")
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    if not ({"path", "label"} <= set(columns) or set(KINETICS_COLUMNS) <= set(columns)):
        raise ValueError(f"video manifest {manifest}: expected columns path,label[,split] or Kinetics' "
                         f"{','.join(KINETICS_COLUMNS)}[,split], got {columns}")
    base = Path(video_dir) if video_dir is not None else manifest.parent
    files = [_manifest_path(r, base) for r in rows]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"video manifest {manifest}: {len(missing)} of {len(files)} videos not found, "
                                f"the first {missing[0]}")
    classes = sorted({r["label"] for r in rows})
    if len(classes) < 2:
        raise ValueError(f"video manifest {manifest}: expected at least two labels, found {classes}")
    labels = np.asarray([classes.index(r["label"]) for r in rows], np.int64)
    split = np.asarray([r["split"] for r in rows]) if "split" in columns else None
    train, test = split_rows(labels, split, val_ratio, seed)
    return ClassificationData(str(manifest), _clips(files, image_size, clip_frames, frame_stride), labels, classes,
                              train, test)


def moving_shapes(n_clips: int, image_size: int, clip_frames: int, val_ratio: float = 0.25,
                  seed: int = 0) -> ClassificationData:
    """Clips of a square moving right, left, down or up by image_size / 8 pixels a frame (one token at 8x
    downsampling), wrapping around the edges, over a noisy background of a random colour."""
    if clip_frames < 2:
        raise ValueError(f"video.clip_frames: expected >= 2 (a direction needs two frames), got {clip_frames}")
    rng = np.random.default_rng(seed)
    side, speed = image_size // 4, max(1, image_size // 8)
    labels = np.arange(n_clips) % len(DIRECTIONS)
    rng.shuffle(labels)
    clips = np.empty((n_clips, clip_frames, image_size, image_size, 3), np.uint8)
    span = np.arange(side)
    for i, label in enumerate(labels):
        bg, colour = rng.uniform(0, 110, 3), rng.uniform(140, 255, 3)
        (y, x), (dy, dx) = rng.integers(0, image_size, 2), _STEPS[DIRECTIONS[label]]
        noise = rng.normal(0, 8, (clip_frames, image_size, image_size, 1))
        for t in range(clip_frames):
            img = np.broadcast_to(bg, (image_size, image_size, 3)) + noise[t]
            rows, cols = (y + dy * speed * t + span) % image_size, (x + dx * speed * t + span) % image_size
            img[np.ix_(rows, cols)] = colour
            clips[i, t] = img.clip(0, 255)
    train, test = stratified_split(labels, val_ratio, seed)
    return ClassificationData("moving shapes (generated: the direction a square moves)", clips,
                              labels.astype(np.int64), list(DIRECTIONS), train, test)
