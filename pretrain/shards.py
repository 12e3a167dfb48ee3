"""Token shards: every source encoded once by the frozen tokenizer, so pretraining streams integers.

Layout (a Zarr group, `layout` 2)::

    tokens.zarr/
      zarr.json                attributes: format, layout, tokenizer config and checkpoint, resolution, clip
                               sampling, shards per source
      <source>/<shard>         (N, T, h, w) uint16 (int32 for vocabularies over 65536), chunked by clips,
                               zstd + a CRC32C checksum per chunk; shard 00000, 00001, ...
      progress/<source>/<shard>.json   committed clips, finished items (clips of each), skipped items, complete
      index.json               written once every shard is complete: per source the clips of each shard and of
                               each item, the items' split keys, the skipped items

A source's items (in its fixed order) are cut into `min(shards_per_source, items)` contiguous shards. The
cut depends on the items only, never on the number of processes: under torchrun rank r writes shards
r, r + world, ..., and a run stopped with one number of ranks resumes with another. Shards in order are
the items in order, so the index restores the clip order of a single process; the held-out split is a
property of each item (`held_out_items`: a hash of its key), so it does not depend on the sharding either.

Each item is decoded in a DataLoader worker process, its clips encoded in batches of `batch_clips` clips
(never mixing items, so the tokens do not depend on the sharding, the workers or the ranks). Writing is
resumable: a shard's clips are appended, then its progress file is replaced atomically (write + rename). A
writer killed at any point leaves a prefix of finished items per shard; the next run truncates each shard
to its committed clips and continues with its first unfinished item. One run at a time: rank 0 holds the
trajectory store's lock (`tokens.zarr.lock`, naming its PID) from before the other ranks start writing
until the index is written.

Stores written before shards existed (`layout` 1: one array per source, `progress.json`) are read as they
were, with their split (the last fraction of each source's clips); they can no longer be extended.

The store is a local path or an fsspec URL (s3://, gs://, memory://; `pretrain.urls`), Zarr reading and
writing it through its fsspec store. What holds where: locally, as above. On an object store every chunk, the
arrays' and the group's metadata (zarr.json), a progress file and the index are each one object written by one
PUT, which readers see whole or not at all (S3, GCS): the resume guarantee holds, since an append killed
midway leaves only rows past the committed count, which the next run truncates. A new store is created in
place (no rename: its zarr.json, attributes included, is one object). There is no lock: `flock` has no
counterpart there, so running one toto-tokenize at a time on a remote store is up to the user (a warning says
so). File systems that write in place (ftp, sftp) give none of these guarantees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch.distributed as dist
import zarr
import zarr.codecs
import zarr.errors
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from pretrain import urls
from pretrain.data import READ_ERRORS, SkipLog, Source, SourceError
from toto_robot.checkpoint import load_tokenizer, save_tokenizer  # noqa: F401  (re-exported for their callers)
from toto_robot.store import build_aside, checksummed, store_lock
from toto_robot.threads import default_threads
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

log = logging.getLogger(__name__)

FORMAT_NAME = "toto-token-shards"
LAYOUT = 2
INDEX_FILE = "index.json"
PROGRESS_DIR = "progress"
LEGACY_PROGRESS_FILE = "progress.json"  # layout 1
CHUNK_CLIPS = 64
SHARDS_PER_SOURCE = 64
POLL_S = 0.5  # rank 0 waiting for the other ranks' shards


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def shard_ranges(n_items: int, shards_per_source: int) -> list[range]:
    """Item positions of each shard: `min(shards_per_source, n_items)` contiguous, near-equal ranges."""
    n = min(shards_per_source, n_items)
    bounds = [s * n_items // n for s in range(n + 1)]
    return [range(bounds[s], bounds[s + 1]) for s in range(n)]


def key_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` (the first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def held_out_items(keys: list[str], clips: np.ndarray, fraction: float) -> np.ndarray:
    """Which items are held out: those whose key hashes below `fraction`. Items sharing a key stay together.
    Among keys with clips, at least one is held out and at least one trains whenever there are two or more
    and `fraction` > 0 (the smallest hash is held out, the largest trains)."""
    clips = np.asarray(clips)
    u = np.array([key_fraction(k) for k in keys]) if keys else np.zeros(0)
    held = u < fraction
    has = {k for k, c in zip(keys, clips) if c > 0}
    if fraction > 0 and len(has) > 1:
        ranked = sorted(has, key=key_fraction)
        if not any(held[i] for i, k in enumerate(keys) if k in has):
            held |= np.array([k == ranked[0] for k in keys])
        if all(held[i] for i, k in enumerate(keys) if k in has):
            held &= np.array([k != ranked[-1] for k in keys])
    return held


class ItemClips(IterableDataset):
    """Items decoded front to back, in a DataLoader worker (worker w of n takes items w, w + n, ...).
    Yields (position, clips (n, T, S, S, 3) uint8 or None, last piece of the item, error or None), at most
    `batch_clips` clips a piece. A read error ends the item with its message (the main process skips or
    stops: exceptions from FFmpeg do not always survive pickling)."""

    def __init__(self, source: Source, items: list[str], batch_clips: int):
        self.source, self.items, self.batch_clips = source, items, batch_clips

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for pos in range(worker, len(self.items), n_workers):
            batch = []
            try:
                for clip in self.source.clips(self.items[pos]):
                    batch.append(clip)
                    if len(batch) == self.batch_clips:
                        yield pos, np.stack(batch), False, None
                        batch = []
            except READ_ERRORS as err:
                yield pos, None, True, f"{type(err).__name__}: {err}"
                continue
            yield pos, np.stack(batch) if batch else None, True, None


class ReadFailure(Exception):
    """An item a decode worker could not read (the worker's error, as text)."""


def _settings(sources: list[Source], tokenizer: Tokenizer, tokenizer_path: str, shards_per_source: int) -> dict:
    first = sources[0]
    for src in sources:
        if (src.size, src.clip_frames, src.stride) != (first.size, first.clip_frames, first.stride):
            raise ValueError(f"source {src.name!r}: expected the same resolution and clip sampling as {first.name!r}")
    settings = {"format": FORMAT_NAME, "layout": LAYOUT, "tokenizer": asdict(tokenizer.cfg),
                "tokenizer_checkpoint": str(tokenizer_path), "resolution": first.size, "clip_frames": first.clip_frames,
                "frame_stride": first.stride, "grid": first.size // tokenizer.cfg.downsample,
                "vocab_size": tokenizer.vocab_size, "shards_per_source": shards_per_source}
    return json.loads(json.dumps(settings))


def _progress_path(out: str, source: str, shard: int) -> str:
    return urls.join(out, PROGRESS_DIR, source, f"{shard:05d}.json")


def _read_progress(path: str) -> dict:
    text = urls.read_text_if_any(path)
    if text is not None:
        return json.loads(text)
    return {"done": 0, "n_clips": 0, "item_clips": [], "skipped": [], "complete": False}


def _items_digest(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _prepare(sources: list[Source], out: str, settings: dict, dtype: np.dtype, chunk_clips: int) -> dict | None:
    """Rank 0, holding the lock (a local store): create or check the store and every shard's (possibly empty)
    array. Returns the summary of a complete layout-1 store (nothing to do), else None."""
    if not urls.exists(out) or not urls.listdir(out):
        local = urls.local_path(out)
        if local is not None:
            build_aside(local, lambda tmp: zarr.open_group(tmp, mode="w", zarr_format=3).attrs.update(settings))
        else:  # no rename on an object store: the group's zarr.json, attributes included, is one object
            zarr.open_group(out, mode="w", zarr_format=3, attributes=settings)
    try:
        root = zarr.open_group(out, mode="r+")
    except zarr.errors.NodeNotFoundError:
        raise ValueError(f"token shards {out}: expected a directory written by toto-tokenize, found a folder that "
                         "is not a Zarr group; write to a new directory") from None
    attrs = dict(root.attrs)
    if attrs.get("format") == FORMAT_NAME and "layout" not in attrs:
        return _legacy_summary(out, sources)
    if attrs.get("format") is None:
        root.attrs.update(settings)
    elif attrs != settings:
        diff = sorted(k for k in settings if attrs.get(k) != settings[k])
        raise ValueError(f"token shards {out}: expected a store written with the same settings to resume, found "
                         f"different {diff}; write to a new directory (or delete {out})")
    grid = settings["grid"]
    for src in sources:
        items = src.items()
        group = root.require_group(src.name)
        meta = {"kind": src.kind, "n_items": len(items), "items_sha256": _items_digest(items)}
        if "items_sha256" not in group.attrs:
            group.attrs.update(meta)
        elif dict(group.attrs) != meta:
            raise ValueError(f"token shards {out}: source {src.name!r} listed {group.attrs['n_items']} items when "
                             f"this store was started, now {len(items)} (or other ones); write to a new directory")
        for s in range(len(shard_ranges(len(items), settings["shards_per_source"]))):
            if f"{s:05d}" not in group:
                shape = (src.clip_frames, grid, grid)
                group.create_array(f"{s:05d}", shape=(0, *shape), chunks=(chunk_clips, *shape), dtype=dtype,
                                   **checksummed(3, zarr.codecs.ZstdCodec(level=0)))  # zarr's default, plus a checksum
        urls.makedirs(urls.parent(_progress_path(out, src.name, 0)))
    return None


def _legacy_summary(out: str, sources: list[Source]) -> dict:
    text = urls.read_text_if_any(urls.join(out, LEGACY_PROGRESS_FILE))
    progress = json.loads(text) if text is not None else {}
    names = [s.name for s in sources]
    if sorted(progress) != sorted(names) or not all(v["complete"] for v in progress.values()):
        raise ValueError(f"token shards {out}: written by an older toto-tokenize (one array per source) and not "
                         f"finished for sources {names}; this version writes sharded stores only: re-tokenize into a "
                         "new directory")
    root = zarr.open_group(out, mode="r")
    log.warning("token shards %s: written by an older toto-tokenize (one array per source), complete: nothing to "
                "do (re-tokenize into a new directory for the sharded layout)", out)
    return {s.name: {"kind": s.kind, "clips": progress[s.name]["n_clips"],
                     "tokens": progress[s.name]["n_clips"] * int(np.prod(root[s.name]["ids"].shape[1:])),
                     "skipped": len(progress[s.name]["skipped"]), "items": len(s.items())} for s in sources}


def tokenize_sources(sources: list[Source], tokenizer: Tokenizer, out: str | Path, *, tokenizer_path: str,
                     batch_clips: int = 8, strict: bool = False, progress: bool = True,
                     shards_per_source: int = SHARDS_PER_SOURCE, workers: int | None = None,
                     chunk_clips: int = CHUNK_CLIPS) -> dict:
    """Encode every clip of every source into `out` (a path or a URL); resumes a previous run with the same
    settings, with any number of ranks. Under torch.distributed each rank writes its shards (module docstring). `workers`:
    decode processes per rank (None: half the cores, the thread policy's default; 0: decode in this process).
    Returns per source: clips, tokens, skipped and items in total, and this rank's share (`rank_*`)."""
    for name, value in (("batch_clips", batch_clips), ("shards_per_source", shards_per_source),
                        ("chunk_clips", chunk_clips)):
        if value < 1:
            raise ValueError(f"{name}: expected a positive integer, found {value}")
    out = urls.location(out)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    workers = default_threads() if workers is None else workers
    settings = _settings(sources, tokenizer, tokenizer_path, shards_per_source)
    dtype = token_dtype(tokenizer.vocab_size)
    with ExitStack() as stack:
        legacy = None
        if rank == 0:
            local = urls.local_path(out)
            if local is not None:
                stack.enter_context(store_lock(local))  # the other ranks write only after this rank holds it
            else:
                log.warning("token shards %s: not on the local file system, so not locked (module docstring): run "
                            "one toto-tokenize at a time on it", out)
            legacy = _prepare(sources, out, settings, dtype, chunk_clips)
        if world > 1:
            box = [legacy]
            dist.broadcast_object_list(box, 0)
            legacy = box[0]
        if legacy is not None:
            return legacy
        root = zarr.open_group(out, mode="r+")
        share = {}
        for src in sources:
            ranges = shard_ranges(len(src.items()), shards_per_source)
            mine = list(range(rank, len(ranges), world))
            n_items = sum(len(ranges[s]) for s in mine)
            print(f"toto-tokenize rank {rank} of {world}: source {src.name}: shards {mine[:8]}"
                  f"{' ...' if len(mine) > 8 else ''} ({len(mine)} of {len(ranges)}), {n_items} of "
                  f"{len(src.items())} items", flush=True)
            clips = 0
            for s in mine:
                clips += _tokenize_shard(src, ranges[s], root[src.name][f"{s:05d}"], _progress_path(out, src.name, s),
                                         tokenizer, dtype, batch_clips, strict, workers,
                                         progress and world == 1, f"tokenize {src.name} {s + 1}/{len(ranges)}")
            share[src.name] = {"rank_shards": len(mine), "rank_items": n_items, "rank_clips": clips}
        print(f"toto-tokenize rank {rank} of {world}: wrote "
              + ", ".join(f"{k}: {v['rank_clips']} clips" for k, v in share.items()), flush=True)
        if rank == 0:
            index = _write_index(sources, out, shards_per_source)
        else:
            # rank 0 writes it once every shard is complete
            while (text := urls.read_text_if_any(urls.join(out, INDEX_FILE))) is None:
                time.sleep(POLL_S)
            index = json.loads(text)
    per_clip = settings["clip_frames"] * settings["grid"] ** 2
    summary = {}
    for src in sources:
        entry = index[src.name]
        n = sum(entry["shards"])
        summary[src.name] = {"kind": src.kind, "clips": n, "tokens": n * per_clip, "skipped": len(entry["skipped"]),
                             "items": len(entry["item_clips"]), **share[src.name]}
    return summary


def _tokenize_shard(src: Source, items: range, ids: zarr.Array, progress_path: str, tokenizer: Tokenizer,
                    dtype: np.dtype, batch_clips: int, strict: bool, workers: int, progress: bool, desc: str) -> int:
    """Encode one shard's items (resuming after its committed prefix); returns the clips written by this call."""
    state = _read_progress(progress_path)
    if state["complete"]:
        return 0
    if ids.shape[0] != state["n_clips"]:  # drop clips appended after the last commit
        ids.resize((state["n_clips"], *ids.shape[1:]))
    names = src.items()[items.start + state["done"]:items.stop]
    loader = DataLoader(ItemClips(src, names, batch_clips), batch_size=None, num_workers=workers)
    skips = SkipLog()
    pieces: dict[int, list | None] = {}  # item position -> its encoded pieces (None: failed)
    finished: dict[int, list | None] = {}
    ready: list[np.ndarray] = []  # finished items' tokens, in item order, not yet committed
    written, next_pos = 0, 0

    def commit():
        nonlocal ready, written
        if ready:
            block = np.concatenate(ready)
            ids.append(block, axis=0)
            state["n_clips"] += len(block)
            written += len(block)
            ready = []
        urls.write_text(progress_path, json.dumps(state) + "\n")

    bar = tqdm(total=len(items), initial=state["done"], desc=desc, disable=not progress)
    for pos, clips, last, error in loader:
        if error is not None:
            if strict:
                raise SourceError(f"source {src.name!r}: cannot read {names[pos]} ({error}); strict mode stops "
                                  "here (data.strict=false skips unreadable files)")
            skips.add(src.name, names[pos], ReadFailure(error))
            pieces[pos] = None
        elif clips is not None and pieces.get(pos, []) is not None:
            pieces.setdefault(pos, []).append(tokenizer.encode(clips).cpu().numpy().astype(dtype))
        if last:
            finished[pos] = pieces.pop(pos, [])
        while next_pos in finished:  # items are committed in order whatever order the workers finish in
            done = finished.pop(next_pos)
            if done is None:
                state["skipped"].append(names[next_pos])
                state["item_clips"].append(0)
            else:
                ready.extend(done)
                state["item_clips"].append(sum(len(p) for p in done))
            state["done"] += 1
            next_pos += 1
            bar.update(1)
            if sum(len(r) for r in ready) >= ids.chunks[0]:
                commit()
    state["complete"] = True
    commit()
    bar.close()
    return written


def _write_index(sources: list[Source], out: str, shards_per_source: int) -> dict:
    """Rank 0: wait for every shard to be complete, then write index.json (replacing any earlier one)."""
    index = {}
    for src in sources:
        n = len(shard_ranges(len(src.items()), shards_per_source))
        paths = [_progress_path(out, src.name, s) for s in range(n)]
        states = [_read_progress(p) for p in paths]
        while not all(st["complete"] for st in states):
            time.sleep(POLL_S)
            states = [st if st["complete"] else _read_progress(p) for p, st in zip(paths, states)]
        item_clips = [c for st in states for c in st["item_clips"]]
        skipped = [i for st in states for i in st["skipped"]]
        if sum(item_clips) == 0:
            raise SourceError(f"source {src.name!r}: expected at least one readable clip, found none "
                              f"({len(skipped)} of {len(item_clips)} items unreadable)")
        if skipped:
            log.warning("source %s: %d unreadable items skipped: %s", src.name, len(skipped), skipped[:10])
        index[src.name] = {"kind": src.kind, "shards": [st["n_clips"] for st in states], "item_clips": item_clips,
                           "item_keys": [src.item_key(i) for i in src.items()], "skipped": skipped}
    urls.write_text(urls.join(out, INDEX_FILE), json.dumps(index) + "\n")
    return index


class TokenShards:
    """Read side of the shards: per source, its shard arrays (loaded to memory when small) in order, and the
    train and held-out clips as ranges of the source's clip numbers (clip g is row g - offset of its shard).

    Held out: the items `held_out_items` picks; a layout-1 store keeps its own split (the last `held_out`
    fraction of each source's clips)."""

    def __init__(self, path: str | Path, held_out: float = 0.1, in_memory_bytes: int = 1 << 30):
        self.path = urls.location(path)  # a local path or a URL
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out: expected a fraction in [0, 1), got {held_out}")
        if urls.is_file(urls.join(self.path, INDEX_FILE)):
            self.layout = LAYOUT
        elif urls.is_file(urls.join(self.path, LEGACY_PROGRESS_FILE)):
            self.layout = 1
        elif urls.is_dir(urls.join(self.path, PROGRESS_DIR)):
            raise ValueError(f"token shards {self.path}: not finished (no {INDEX_FILE} yet); rerun toto-tokenize")
        else:
            raise FileNotFoundError(f"token shards: expected {INDEX_FILE} in {self.path} (write shards with "
                                    "toto-tokenize), found nothing")
        root = zarr.open_group(self.path, mode="r")
        self.attrs = dict(root.attrs)
        if self.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"token shards {self.path}: expected format {FORMAT_NAME!r}, found {self.attrs.get('format')!r}")
        self.kinds, self.parts, self.offsets, self.ranges = {}, {}, {}, {}
        if self.layout == 1:
            self._read_legacy(root, held_out, in_memory_bytes)
        else:
            self._read_index(root, held_out, in_memory_bytes)
        self.names = sorted(self.parts)

    def _read_legacy(self, root: zarr.Group, held_out: float, in_memory_bytes: int):
        progress = json.loads(urls.read_text(urls.join(self.path, LEGACY_PROGRESS_FILE)))
        incomplete = [k for k, v in progress.items() if not v["complete"]]
        if incomplete:
            raise ValueError(f"token shards {self.path}: sources {incomplete} are not finished; rerun toto-tokenize")
        for name, state in progress.items():
            n = state["n_clips"]
            arr = root[name]["ids"]
            self.parts[name] = [arr[:n] if arr.nbytes <= in_memory_bytes else arr]
            self.offsets[name] = np.array([0, n])
            self.kinds[name] = state["kind"]
            n_held = round(n * held_out) if n > 1 else 0
            if held_out > 0 and n > 1:
                n_held = max(1, n_held)
            a = n - n_held  # train = [0, a), held out = [a, n)
            self.ranges[name] = {"train": (np.array([0]), np.array([a])), "held_out": (np.array([a]), np.array([n_held]))}

    def _read_index(self, root: zarr.Group, held_out: float, in_memory_bytes: int):
        index = json.loads(urls.read_text(urls.join(self.path, INDEX_FILE)))
        for name, entry in index.items():
            arrays = [root[name][f"{s:05d}"] for s in range(len(entry["shards"]))]
            small = sum(n * int(np.prod(a.shape[1:])) * a.dtype.itemsize for n, a in zip(entry["shards"], arrays))
            self.parts[name] = [a[:n] if small <= in_memory_bytes else a for n, a in zip(entry["shards"], arrays)]
            self.offsets[name] = np.concatenate([[0], np.cumsum(entry["shards"])])
            self.kinds[name] = entry["kind"]
            counts = np.asarray(entry["item_clips"], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            held = held_out_items(entry["item_keys"], counts, held_out)
            keep = counts > 0
            self.ranges[name] = {"train": (starts[keep & ~held], counts[keep & ~held]),
                                 "held_out": (starts[keep & held], counts[keep & held])}

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
        return int(self.ranges[name][split][1].sum())

    def clip_numbers(self, name: str, index: np.ndarray, split: str = "train") -> np.ndarray:
        """Positions within a split -> the source's clip numbers (its clips in single-process order)."""
        starts, counts = self.ranges[name][split]
        ends = np.cumsum(counts)
        index = np.asarray(index, dtype=np.int64)
        j = np.searchsorted(ends, index, side="right")  # the range holding each position
        return starts[j] + index - (ends[j] - counts[j])

    def in_split(self, name: str, lo: int, hi: int, split: str = "train") -> np.ndarray:
        """The clip numbers in [lo, hi) that belong to `split`, in order."""
        starts, counts = self.ranges[name][split]  # sorted, disjoint
        j0, j1 = np.searchsorted(starts + counts, lo, side="right"), np.searchsorted(starts, hi, side="left")
        spans = [np.arange(max(x, lo), min(x + c, hi)) for x, c in zip(starts[j0:j1], counts[j0:j1])]
        return np.concatenate([*spans, np.zeros(0, np.int64)]).astype(np.int64)

    def chunk_bounds(self, name: str) -> np.ndarray:
        """Clip numbers where the storage chunks of a source start, and its clip count last: chunk k is
        [bounds[k], bounds[k + 1]), always inside one shard."""
        bounds = []
        for arr, lo, hi in zip(self.parts[name], self.offsets[name][:-1], self.offsets[name][1:]):
            step = arr.chunks[0] if not isinstance(arr, np.ndarray) else CHUNK_CLIPS
            bounds.append(np.arange(lo, hi, step))
        return np.concatenate([*bounds, [self.offsets[name][-1]]]).astype(np.int64)

    def read(self, name: str, numbers: np.ndarray) -> np.ndarray:
        """(len(numbers), T, h, w) token grids, in the shards' dtype, by clip number. Each distinct clip is read
        once, in increasing order per shard (what zarr's orthogonal selection wants)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        first = self.parts[name][0]
        out = np.empty((len(numbers), *first.shape[1:]), dtype=first.dtype)
        part = np.searchsorted(self.offsets[name], numbers, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            uniq, inverse = np.unique(numbers[sel] - self.offsets[name][p], return_inverse=True)
            arr = self.parts[name][p]
            rows = arr[uniq] if isinstance(arr, np.ndarray) else arr.get_orthogonal_selection((uniq,))
            out[sel] = np.asarray(rows)[inverse]
        return out

    def clips(self, name: str, index: np.ndarray, split: str = "train") -> np.ndarray:
        """(len(index), T, h, w) int64 token grids by position within the split."""
        return self.read(name, self.clip_numbers(name, index, split)).astype(np.int64)
