"""Token shards: every source encoded once by the frozen tokenizer, so pretraining streams integers.

Layout (a Zarr group)::

    tokens.zarr/
      <source>/ids       (N, T, h, w) uint16 (int32 for vocabularies over 65536), chunked by clips,
                         zstd + a CRC32C checksum per chunk
      zarr.json          attributes: format, tokenizer config and checkpoint, resolution, clip sampling
      progress.json      per source: committed clip count, finished items, skipped items, complete flag

Writing is resumable: an item's clips are appended, then `progress.json` is replaced atomically
(write + rename). A writer killed at any point leaves a prefix of finished items; the next run
truncates each array to its committed count and continues with the first unfinished item. One writer
at a time: a run holds the trajectory store's lock (`tokens.zarr.lock`, naming its PID), and a new
directory is built aside and renamed into place, as `TrajectoryStore` does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from tqdm.auto import tqdm

from pretrain.data import SkipLog, Source, SourceError, item_clips
from toto_robot.atomic import atomic_write_text
from toto_robot.checkpoint import load_tokenizer, save_tokenizer  # noqa: F401  (re-exported for their callers)
from toto_robot.store import build_aside, checksummed, store_lock
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)

FORMAT_NAME = "toto-token-shards"
PROGRESS_FILE = "progress.json"
CHUNK_CLIPS = 64


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def tokenize_sources(sources: list[Source], tokenizer: Tokenizer, out: str | Path, *, tokenizer_path: str,
                     batch_clips: int = 8, strict: bool = False, progress: bool = True) -> dict:
    """Encode every clip of every source into `out`; resumes a previous run with the same settings.
    Returns a summary: clips and tokens per source, skipped items."""
    out = Path(out)
    with store_lock(out):  # progress.json is one file: a second writer waits, then names this one
        return _tokenize_sources(sources, tokenizer, out, tokenizer_path=tokenizer_path, batch_clips=batch_clips,
                                 strict=strict, progress=progress)


def _tokenize_sources(sources: list[Source], tokenizer: Tokenizer, out: Path, *, tokenizer_path: str,
                      batch_clips: int, strict: bool, progress: bool) -> dict:
    first = sources[0]
    grid = first.size // tokenizer.cfg.downsample
    settings = {"format": FORMAT_NAME, "tokenizer": asdict(tokenizer.cfg), "tokenizer_checkpoint": str(tokenizer_path),
                "resolution": first.size, "clip_frames": first.clip_frames, "frame_stride": first.stride,
                "grid": grid, "vocab_size": tokenizer.vocab_size}
    settings = json.loads(json.dumps(settings))
    if not out.exists() or not any(out.iterdir()):
        build_aside(out, lambda tmp: zarr.open_group(tmp, mode="w", zarr_format=3).attrs.update(settings))
    try:
        root = zarr.open_group(out, mode="r+")
    except zarr.errors.NodeNotFoundError:
        raise ValueError(f"token shards {out}: expected a directory written by toto-tokenize, found a folder that "
                         "is not a Zarr group; write to a new directory") from None
    if root.attrs.get("format") is None:
        root.attrs.update(settings)
    elif dict(root.attrs) != settings:
        diff = sorted(k for k in settings if root.attrs.get(k) != settings[k])
        raise ValueError(f"token shards {out}: expected a store written with the same settings to resume, found "
                         f"different {diff}; write to a new directory (or delete {out})")
    progress_path = out / PROGRESS_FILE
    committed = json.loads(progress_path.read_text()) if progress_path.is_file() else {}
    dtype = token_dtype(tokenizer.vocab_size)
    summary = {}
    for src in sources:
        if (src.size, src.clip_frames, src.stride) != (first.size, first.clip_frames, first.stride):
            raise ValueError(f"source {src.name!r}: expected the same resolution and clip sampling as {first.name!r}")
        state = committed.setdefault(src.name, {"kind": src.kind, "n_clips": 0, "done": 0, "skipped": [],
                                               "complete": False})
        shape = (src.clip_frames, grid, grid)
        if src.name in root:
            ids = root[src.name]["ids"]
            if ids.shape[0] != state["n_clips"]:  # drop clips appended after the last commit
                ids.resize((state["n_clips"], *shape))
        else:
            ids = root.create_group(src.name).create_array(
                "ids", shape=(0, *shape), chunks=(CHUNK_CLIPS, *shape), dtype=dtype,
                **checksummed(3, zarr.codecs.ZstdCodec(level=0)))  # zarr's default compressor, plus a checksum
        items = src.items()
        skips = SkipLog()
        bar = tqdm(total=len(items), initial=state["done"], desc=f"tokenize {src.name}", disable=not progress)
        for item in items[state["done"]:]:
            encoded, batch = [], []
            before = len(skips.skipped.get(src.name, []))
            for clip in item_clips(src, item, skips, strict):
                batch.append(clip)
                if len(batch) == batch_clips:
                    encoded.append(tokenizer.encode(np.stack(batch)).numpy())
                    batch = []
            if batch:
                encoded.append(tokenizer.encode(np.stack(batch)).numpy())
            if len(skips.skipped.get(src.name, [])) > before:  # a failed item contributes nothing
                state["skipped"].append(item)
            elif encoded:
                ids.append(np.concatenate(encoded).astype(dtype), axis=0)
                state["n_clips"] += sum(len(e) for e in encoded)
            state["done"] += 1
            atomic_write_text(progress_path, json.dumps(committed, indent=1) + "\n")
            bar.update(1)
        bar.close()
        if state["n_clips"] == 0:
            raise SourceError(f"source {src.name!r}: expected at least one readable clip, found none "
                              f"({len(state['skipped'])} of {len(items)} items unreadable)")
        state["complete"] = True
        atomic_write_text(progress_path, json.dumps(committed, indent=1) + "\n")
        summary[src.name] = {"kind": src.kind, "clips": state["n_clips"], "tokens": state["n_clips"] * int(np.prod(shape)),
                             "skipped": len(state["skipped"]), "items": len(items)}
        if state["skipped"]:
            log.warning("source %s: %d unreadable items skipped: %s", src.name, len(state["skipped"]),
                        state["skipped"][:10])
    return summary


class TokenShards:
    """Read side of the shards: per-source arrays (loaded to memory when small), split into train and
    held-out clips (the last `held_out` fraction of each source, so whole videos stay on one side)."""

    def __init__(self, path: str | Path, held_out: float = 0.1, in_memory_bytes: int = 1 << 30):
        self.path = Path(path)
        progress_path = self.path / PROGRESS_FILE
        if not progress_path.is_file():
            raise FileNotFoundError(f"token shards: expected {PROGRESS_FILE} in {self.path} (write shards with "
                                    "toto-tokenize), found nothing")
        root = zarr.open_group(self.path, mode="r")
        self.attrs = dict(root.attrs)
        if self.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"token shards {self.path}: expected format {FORMAT_NAME!r}, found {self.attrs.get('format')!r}")
        progress = json.loads(progress_path.read_text())
        incomplete = [k for k, v in progress.items() if not v["complete"]]
        if incomplete:
            raise ValueError(f"token shards {self.path}: sources {incomplete} are not finished; rerun toto-tokenize")
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out: expected a fraction in [0, 1), got {held_out}")
        self.names = sorted(progress)
        self.kinds, self.arrays, self.split = {}, {}, {}
        for name in self.names:
            n = progress[name]["n_clips"]
            arr = root[name]["ids"]
            self.arrays[name] = arr[:n] if arr.nbytes <= in_memory_bytes else arr
            self.kinds[name] = progress[name]["kind"]
            n_held = round(n * held_out) if n > 1 else 0
            if held_out > 0 and n > 1:
                n_held = max(1, n_held)
            self.split[name] = (n - n_held, n)  # train = [0, a), held out = [a, n)

    @property
    def clip_frames(self) -> int:
        return int(self.attrs["clip_frames"])

    @property
    def grid(self) -> int:
        return int(self.attrs["grid"])

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return TokenizerConfig(**self.attrs["tokenizer"])

    def n_clips(self, name: str, split: str = "train") -> int:
        a, n = self.split[name]
        return a if split == "train" else n - a

    def clips(self, name: str, index: np.ndarray, split: str = "train") -> np.ndarray:
        """(len(index), T, h, w) int64 token grids by position within the split."""
        offset = 0 if split == "train" else self.split[name][0]
        arr = self.arrays[name]
        # Read each distinct clip once, in increasing order (what zarr's orthogonal selection wants).
        uniq, inverse = np.unique(np.asarray(index) + offset, return_inverse=True)
        rows = arr[uniq] if isinstance(arr, np.ndarray) else arr.get_orthogonal_selection((uniq,))
        return np.asarray(rows, dtype=np.int64)[inverse]
