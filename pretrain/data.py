"""Pretraining data: sources of frames behind one interface, the paper's clip sampling, a weighted mixture.

A source is a list of *items* (a video file, a folder of frames, a group of images, a camera of a robot
episode); each item yields clips of `clip_frames` frames, uint8 (T, S, S, 3) at the training resolution S,
every frame through `toto_robot.frames.preprocess_frame` (centre crop to a square, box resampling), the
function the robot's observations go through too. Source kinds:

- `videos`: a directory tree of videos (mp4, webm, mov, avi, mkv, gif) read with PyAV, and folders of
  image frames (each folder sorted by name is one video). An Ego4D-style layout adds a `manifest`
  (CSV or JSON) listing the clips to use.
- `images`: independent images, grouped `clip_frames` to a sequence (Toto's image sequences).
- `zarr`: a `TrajectoryStore`; every camera key of every episode is a video.
- `generated`: writes a small folder of synthetic mp4s once (the zero-configuration default), then
  reads it like `videos`.

A `videos` or `images` root (and a manifest) is a local path or an fsspec URL (s3://, gs://, memory://,
file://; `pretrain.urls`): its files are listed and opened through fsspec, and a video is decoded by PyAV
from the file object, so nothing is copied to local disk first. A `zarr` or `generated` root is local: the
trajectory store opens local paths only, and generated videos are written to a local folder.

Clip sampling (`clip_indices`): 16 frames, one in every 4 by default; a video yields consecutive,
non-overlapping clips; a video too short for one clip yields a single clip whose missing frames repeat
the last frame. Unreadable items are skipped and counted (`strict=True` raises instead).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from pretrain import urls
from toto_robot.frames import preprocess_frame, preprocess_frames
from toto_robot.typecheck import check_value
from toto_robot.video import write_mp4

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SOURCE_KINDS = ("videos", "images", "zarr", "generated")
# What a broken file raises while it is opened or decoded: PyAV's FFmpeg errors, PIL's, file system errors.
READ_ERRORS = (av.error.FFmpegError, UnidentifiedImageError, OSError, EOFError, ValueError, KeyError)


class SourceError(ValueError):
    """A source cannot supply data: nothing found, or (strict mode) an unreadable item."""


def clip_indices(n_frames: int, clip_frames: int = 16, stride: int = 4) -> list[np.ndarray]:
    """Source-frame indices of the clips of a video with `n_frames` frames.

    Clip k takes frames k*span + j*stride (j < clip_frames, span = clip_frames*stride): consecutive,
    non-overlapping clips, a trailing partial span dropped. A video shorter than one clip's extent
    gives one clip with indices clamped to the last frame (its tail repeats the last frame)."""
    if n_frames < 1:
        return []
    span = clip_frames * stride
    extent = (clip_frames - 1) * stride + 1  # frames one clip reaches
    offsets = np.arange(clip_frames) * stride
    if n_frames < extent:
        return [np.minimum(offsets, n_frames - 1)]
    return [k * span + offsets for k in range((n_frames - extent) // span + 1)]


def video_frame(frame: av.VideoFrame, size: int) -> np.ndarray:
    """A decoded frame -> (size, size, 3) uint8: converted to RGB at its own size, then `preprocess_frame`."""
    return preprocess_frame(frame.to_ndarray(format="rgb24"), size)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """An image file (a path or a URL) -> (size, size, 3) uint8 through `preprocess_frame`."""
    with urls.open_file(path) as f, Image.open(f) as img:
        return preprocess_frame(np.asarray(img.convert("RGB")), size)


@contextmanager
def open_video(path: str | Path) -> Iterator[av.container.InputContainer]:
    """PyAV's container of a video file: opened by FFmpeg from a local path, from fsspec's file object for a
    URL (read as FFmpeg asks, in the file system's blocks: a front-to-back decode reads the file about once)."""
    local = urls.local_path(path)
    if local is not None:
        with av.open(str(local)) as container:
            yield container
        return
    with urls.open_file(path) as f, av.open(f) as container:
        yield container


def video_clips(path: str | Path, size: int, clip_frames: int, stride: int) -> Iterator[np.ndarray]:
    """Decode a video once, front to back, yielding the clips `clip_indices` describes.

    The number of frames is not trusted from the container (often missing or wrong), so the rule is
    applied while streaming: every `stride`-th frame is kept and each `clip_frames` of them form a clip."""
    kept: list[np.ndarray] = []
    n_clips, last, n = 0, None, 0
    with open_video(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: expected a video stream, found none")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(container.decode(stream), start=1):
            last = frame
            if (n - 1) % stride == 0:
                kept.append(video_frame(frame, size))
                if len(kept) == clip_frames:
                    n_clips += 1
                    yield np.stack(kept)
                    kept = []
        if n == 0:
            raise ValueError(f"{path}: expected decodable frames, found none")
        if n_clips == 0:  # shorter than one clip: pad with the last frame, as clip_indices does
            # kept[j] is frame j*stride; clip_indices clamps the indices past the end to the last frame.
            tail = video_frame(last, size)
            yield np.stack(kept + [tail] * (clip_frames - len(kept)))


def frame_folder_clips(paths: list[str], size: int, clip_frames: int, stride: int) -> Iterator[np.ndarray]:
    for idx in clip_indices(len(paths), clip_frames, stride):
        yield np.stack([load_image(paths[i], size) for i in idx])


def write_video(path: Path, frames: np.ndarray, fps: int = 30, codec: str = "libx264") -> Path:
    """(T, H, W, 3) uint8 -> an H.264 mp4 (near-lossless, crf 10) through PyAV."""
    return write_mp4(path, frames, fps, crf=10, codec=codec)


@dataclass
class SkipLog:
    """Items skipped because they could not be read, per source."""

    skipped: dict[str, list[str]] = field(default_factory=dict)

    def add(self, source: str, item: str, err: BaseException):
        self.skipped.setdefault(source, []).append(item)
        log.warning("skipping unreadable %s item %s (%s: %s); %d skipped so far", source, item,
                    type(err).__name__, err, len(self.skipped[source]))

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.skipped.items()}


class Source:
    """A named list of items, each yielding clips (T, size, size, 3) uint8. `kind` is the sequence's
    start token: "video" or "image"."""

    kind = "video"

    def __init__(self, name: str, size: int, clip_frames: int = 16, stride: int = 4, weight: float = 1.0):
        if size < 1 or clip_frames < 1 or stride < 1:
            raise ValueError(f"source {name!r}: expected positive size, clip_frames and stride, "
                             f"got {size}, {clip_frames}, {stride}")
        if not weight > 0:
            raise ValueError(f"source {name!r}: expected weight > 0, got {weight}")
        self.name, self.size, self.clip_frames, self.stride, self.weight = name, size, clip_frames, stride, weight
        self._items: list[str] | None = None

    def items(self) -> list[str]:
        """Item ids in a fixed order; an empty source is an error."""
        if self._items is None:
            self._items = self._list_items()
            if not self._items:
                raise SourceError(f"source {self.name!r}: expected {self._expected()}, found nothing")
        return self._items

    def clips(self, item: str) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def item_key(self, item: str) -> str:
        """What decides an item's side of the held-out split (`pretrain.shards.held_out_items`): items with
        the same key stay together. The item itself unless a source says otherwise."""
        return item

    def _list_items(self) -> list[str]:
        raise NotImplementedError

    def _expected(self) -> str:
        raise NotImplementedError


class VideoSource(Source):
    """Video files and folders of frames under `root` (a path or a URL), or the clips a manifest lists."""

    def __init__(self, name: str, root: str | Path, manifest: str | Path | None = None, **kw):
        super().__init__(name, **kw)
        self.root = urls.location(root)
        self.manifest = urls.location(manifest) if manifest else None
        if not urls.is_dir(self.root):
            raise SourceError(f"source {name!r}: expected a directory of videos at {self.root}, found "
                              f"{'a file' if urls.exists(self.root) else 'nothing'}")
        if self.manifest is not None and not urls.is_file(self.manifest):
            raise SourceError(f"source {name!r}: expected a manifest file at {self.manifest}, found nothing")

    def _expected(self) -> str:
        what = f"videos ({', '.join(VIDEO_EXTENSIONS)}) or folders of frames under {self.root}"
        return what + (f" listed in {self.manifest}" if self.manifest else "")

    def _list_items(self) -> list[str]:
        if self.manifest is not None:
            return read_manifest(self.manifest, self.root)
        files = urls.find(self.root)
        items = [f for f in files if urls.suffix(f) in VIDEO_EXTENSIONS]
        frame_dirs = {urls.parent(f) for f in files if urls.suffix(f) in IMAGE_EXTENSIONS}
        return sorted(items + sorted(frame_dirs))

    def item_key(self, item: str) -> str:
        """The path below `root`, so the split survives moving the dataset (to an object store too)."""
        return urls.relative(item, self.root) or item

    def clips(self, item: str) -> Iterator[np.ndarray]:
        if urls.is_dir(item):
            frames = sorted(f for f in urls.listdir(item) if urls.suffix(f) in IMAGE_EXTENSIONS)
            return frame_folder_clips(frames, self.size, self.clip_frames, self.stride)
        if not urls.is_file(item):
            raise FileNotFoundError(f"{item}: listed but missing")
        return video_clips(item, self.size, self.clip_frames, self.stride)


def read_manifest(manifest: str | Path, root: str | Path) -> list[str]:
    """Clips listed by an Ego4D-style manifest, resolved under `root` (either a path or a URL).

    CSV: a `path` column, or `video_uid` / `clip_uid` (the file is `<uid>.mp4`). JSON: a list of such
    records or of paths, or an object with a `videos` or `clips` list (Ego4D's metadata files)."""
    kind = urls.suffix(manifest)
    if kind == ".csv":
        with urls.open_file(manifest) as f:
            records: list = list(csv.DictReader(io.TextIOWrapper(f, newline="")))
    elif kind == ".json":
        data = json.loads(urls.read_text(manifest))
        if isinstance(data, dict):
            key = next((k for k in ("videos", "clips") if k in data), None)
            if key is None:
                raise SourceError(f"manifest {manifest}: expected a list or an object with 'videos' or 'clips', "
                                  f"found keys {sorted(data)}")
            data = data[key]
        records = data
    else:
        raise SourceError(f"manifest {manifest}: expected a .csv or .json file, found {kind!r}")
    paths = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            paths.append(urls.join(root, rec))
            continue
        if not isinstance(rec, dict):
            raise SourceError(f"manifest {manifest}: entry {i}: expected a path or a record, found {rec!r}")
        if rec.get("path"):
            paths.append(urls.join(root, rec["path"]))
        elif rec.get("clip_uid") or rec.get("video_uid"):
            paths.append(urls.join(root, f"{rec.get('clip_uid') or rec['video_uid']}.mp4"))
        else:
            raise SourceError(f"manifest {manifest}: entry {i}: expected 'path', 'clip_uid' or 'video_uid', "
                              f"found keys {sorted(rec)}")
    return paths


class ImageSource(Source):
    """Independent images under `root` (a path or a URL; recursively), sorted by path and grouped
    `clip_frames` to a sequence; the last group is completed with images from the start."""

    kind = "image"

    def __init__(self, name: str, root: str | Path, **kw):
        super().__init__(name, **kw)
        self.root = urls.location(root)
        if not urls.is_dir(self.root):
            raise SourceError(f"source {name!r}: expected a directory of images at {self.root}, found "
                              f"{'a file' if urls.exists(self.root) else 'nothing'}")

    def _expected(self) -> str:
        return f"images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}"

    def _list_items(self) -> list[str]:
        files = sorted(f for f in urls.find(self.root) if urls.suffix(f) in IMAGE_EXTENSIONS)
        if not files:
            return []
        n = -(-len(files) // self.clip_frames)
        return [json.dumps([files[(g * self.clip_frames + j) % len(files)] for j in range(self.clip_frames)])
                for g in range(n)]

    def item_key(self, item: str) -> str:
        """The group's first image, below `root`."""
        first = json.loads(item)[0]
        return urls.relative(first, self.root) or first

    def clips(self, item: str) -> Iterator[np.ndarray]:
        yield np.stack([load_image(p, self.size) for p in json.loads(item)])


class ZarrSource(Source):
    """Camera streams of a trajectory store (a local path: `TrajectoryStore` opens local paths only):
    item `"<episode>/<image key>"`."""

    def __init__(self, name: str, root: str | Path, keys: list[str] | None = None, **kw):
        from toto_robot.store import TrajectoryStore

        super().__init__(name, **kw)
        local = urls.local_path(root)
        if local is None:
            raise SourceError(f"source {name!r}: expected a local path to a trajectory store, got the URL {root} "
                              "(trajectory stores open local paths only; copy the store to local disk)")
        self.store = TrajectoryStore.open(local)
        self.keys = list(keys) if keys else list(self.store.image_keys)
        unknown = [k for k in self.keys if k not in self.store.image_keys]
        if unknown:
            raise SourceError(f"source {name!r}: expected image keys from {list(self.store.image_keys)}, got {unknown}")
        self.root = local

    def _expected(self) -> str:
        return f"episodes with image keys in the trajectory store {self.root}"

    def _list_items(self) -> list[str]:
        return [f"{e}/{k}" for e in range(self.store.n_episodes) for k in self.keys]

    def item_key(self, item: str) -> str:
        """The episode: all cameras of an episode fall on the same side of the held-out split."""
        return item.split("/", 1)[0]

    def clips(self, item: str) -> Iterator[np.ndarray]:
        episode, key = item.split("/", 1)
        frames = self.store.episode(int(episode), keys=[key])[key]  # (T, H, W, 3) uint8
        for idx in clip_indices(len(frames), self.clip_frames, self.stride):
            yield preprocess_frames(frames[idx], self.size)


def generate_videos(root: Path, n_videos: int, frames: int, size: int, seed: int = 0) -> Path:
    """Write `n_videos` synthetic mp4s (moving squares) under `root` unless already there."""
    from toto_robot.synthetic import moving_squares

    root = Path(root)
    done = root / "done.json"
    settings = {"n_videos": n_videos, "frames": frames, "size": size, "seed": seed}
    if done.is_file() and json.loads(done.read_text()) == settings:
        return root
    clips = moving_squares(n_videos, frames, size=size, seed=seed)
    for i, clip in enumerate(clips):
        write_video(root / f"clip_{i:04d}.mp4", clip, fps=30)
    done.write_text(json.dumps(settings))
    return root


def build_source(name: str, node: dict, size: int, clip_frames: int, stride: int) -> Source:
    """A source from its config node: {kind, root, weight, [manifest], [keys], [n_videos, frames]}."""
    node = dict(node)
    kind = node.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise SourceError(f"source {name!r}: expected kind in {SOURCE_KINDS}, got {kind!r}")
    common = {"size": size, "clip_frames": clip_frames, "stride": stride, "weight": float(node.pop("weight", 1.0))}
    allowed = {"videos": {"root", "manifest"}, "images": {"root"}, "zarr": {"root", "keys"},
               "generated": {"root", "n_videos", "frames", "video_size", "seed"}}[kind]
    if "root" not in node or node["root"] in (None, ""):
        raise SourceError(f"source {name!r}: expected a 'root' path, got {node.get('root')!r}")
    extra = set(node) - allowed
    if extra:
        raise SourceError(f"source {name!r} ({kind}): unexpected keys {sorted(extra)}; allowed {sorted(allowed)}")
    if kind == "videos":
        return VideoSource(name, node["root"], node.get("manifest"), **common)
    if kind == "images":
        return ImageSource(name, node["root"], **common)
    if kind == "zarr":
        return ZarrSource(name, node["root"], node.get("keys"), **common)
    local = urls.local_path(node["root"])
    if local is None:
        raise SourceError(f"source {name!r} (generated): expected a local folder to write its videos to, got the "
                          f"URL {node['root']}")
    root = generate_videos(local, int(node.get("n_videos", 8)), int(node.get("frames", 64)),
                           int(node.get("video_size", 64)), int(node.get("seed", 0)))
    return VideoSource(name, root, **common)


def build_sources(data: dict) -> list[Source]:
    """All sources of a data config node: {resolution, clip_frames, frame_stride, sources: {name: node}}."""
    sources = data.get("sources") or {}
    if not sources:
        raise SourceError("data.sources: expected at least one source, got none")
    for key in ("resolution", "clip_frames", "frame_stride"):
        check_value(f"data.{key}", data[key], int)
        if data[key] < 1:
            raise SourceError(f"data.{key}: expected a positive integer, found {data[key]}")
    return [build_source(name, node, data["resolution"], data["clip_frames"], data["frame_stride"])
            for name, node in sources.items()]


def item_clips(source: Source, item: str, skips: SkipLog, strict: bool) -> Iterator[np.ndarray]:
    """Clips of one item; a read error skips the rest of the item (and is counted), or raises if strict."""
    try:
        yield from source.clips(item)
    except READ_ERRORS as err:
        if strict:
            raise SourceError(f"source {source.name!r}: cannot read {item} ({type(err).__name__}: {err}); "
                              "strict mode stops here (data.strict=false skips unreadable files)") from err
        skips.add(source.name, item, err)


class Mixture:
    """An endless stream of clips: each draw picks a source with probability proportional to its weight,
    then takes that source's next clip. Each source walks its items in a seeded random order, epoch after
    epoch, decoding each item front to back (sequential decoding, no seeking)."""

    def __init__(self, sources: list[Source], seed: int = 0, strict: bool = False):
        if not sources:
            raise SourceError("mixture: expected at least one source, got none")
        self.sources = sources
        w = np.array([s.weight for s in sources], dtype=np.float64)
        self.probs = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self.skips = SkipLog()
        self.strict = strict
        self._streams = [self._stream(s, np.random.default_rng([seed, i])) for i, s in enumerate(sources)]

    def _stream(self, source: Source, rng: np.random.Generator) -> Iterator[np.ndarray]:
        items = source.items()
        while True:
            n_before = 0
            for i in rng.permutation(len(items)):
                for clip in item_clips(source, items[i], self.skips, self.strict):
                    n_before += 1
                    yield clip
            if n_before == 0:
                raise SourceError(f"source {source.name!r}: none of its {len(items)} items could be read "
                                  f"(skipped: {self.skips.skipped.get(source.name, [])[:5]} ...)")

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        """(source index, clip (T, S, S, 3) uint8)."""
        i = int(self.rng.choice(len(self.sources), p=self.probs))
        return i, next(self._streams[i])
