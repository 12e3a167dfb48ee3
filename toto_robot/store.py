"""Episodic trajectory store on Zarr, in diffusion_policy's ReplayBuffer layout.

Layout (readable by diffusion_policy's ``ReplayBuffer`` and any zarr client)::

    store.zarr/
      data/<key>          one array per key, time first, chunked along time only
      meta/episode_ends   int64, cumulative end index of each episode
      meta  (attributes)  {"episodes": [{task, seed, success, source, length, ...}, ...]}
      root  (attributes)  {"format", "version", "keys", "attrs", "stats"}

Images are uint8 ``(T, H, W, 3)``; low-dimensional keys are float32 ``(T, D)``. Every array is
compressed losslessly with Blosc zstd (images 4 frames to a chunk; codec and chunking chosen by
``bench/bench_store.py``), and every chunk carries a 32-bit checksum (CRC32 in Zarr format 2,
CRC32C in format 3), so a torn or flipped chunk file is an error naming the file, the key and the
episode instead of silently wrong pixels. Stores written before checksums still read; ``verify``
says which arrays have none.

Atomic appends. ``add_episode`` writes the episode's arrays past the committed end, then
``meta/episode_ends``, then commits by rewriting the ``meta`` attributes, a single small file
that zarr's local store replaces atomically (write to a temporary file, then rename). The list
of episodes in that file is the only thing readers of this class trust: a writer killed at any
point (even ``kill -9``) leaves every earlier episode intact and no partial episode visible,
and the next writer repairs the tail (truncates the arrays and ``episode_ends`` to the last
committed episode). Writers serialize on an advisory lock (``flock``) on a sibling lock file
(``demos.zarr.lock``, which records the holder's PID), so several processes may append to the same
store; a wait for the lock warns after ``LOCK_WARN_S`` and gives up after ``lock_timeout`` seconds
with an error naming the holder. Stores are created under that lock and built aside (in a hidden
sibling directory, then renamed into place), so processes racing to create one path all get the
same complete store (``open_or_create``) and a half-created store is never visible.

Example::

    store = TrajectoryStore.create(
        "demos.zarr",
        schema={"agentview_image": ((84, 84, 3), "uint8"), "action": ((7,), "float32")},
        attrs={"fps": 20, "env": "Lift"},
    )
    store.add_episode(
        {"agentview_image": frames, "action": actions},
        {"task": "lift the cube", "seed": 0, "success": True, "source": "scripted"},
    )
    store = TrajectoryStore.open("demos.zarr")          # read-only
    first = store.episode(0)                             # dict of numpy arrays
    store = TrajectoryStore.open_or_create("demos.zarr", schema, attrs)  # safe under races
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
import zarr.codecs
import zarr.errors

log = logging.getLogger(__name__)

FORMAT_NAME = "toto-trajectory-store"
FORMAT_VERSION = 1

# Per-episode metadata every episode must carry, with the types allowed for each value.
EPISODE_META_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,),
    "seed": (int, type(None)),
    "success": (bool, type(None)),
    "source": (str,),
}

ALLOWED_DTYPES = ("uint8", "float16", "float32", "float64", "int32", "int64", "bool")

# Steps per chunk (and per shard in format 3) when the caller does not choose. The sampler reads
# images a few frames at a time: 4 frames per chunk compresses consecutive, similar frames together
# (5x instead of 3x on robosuite renders) and still decodes in well under a millisecond.
# Low-dimensional keys are small and read whole.
IMAGE_CHUNK_STEPS = 4
LOW_DIM_CHUNK_STEPS = 1024
IMAGE_SHARD_STEPS = 256
EPISODE_ENDS_CHUNK = 4096

# Blosc zstd level 5, chosen by bench/bench_store.py on robosuite renders and states (the README
# has the table): images without shuffling (byte-shuffle is a no-op on uint8 and bit-shuffle
# compresses rendered frames worse), numbers with bit-shuffle.
BLOSC_CNAME = "zstd"
BLOSC_CLEVEL = 5

# Waiting for a store's lock: a warning naming the holder after LOCK_WARN_S, an error after the
# timeout. The kernel drops a flock when its holder exits (even on kill -9), so only a stopped or
# hung writer holds it long; appending one episode takes well under a second.
LOCK_WARN_S = 10.0
LOCK_TIMEOUT_S = 600.0

# What a damaged chunk raises while decoding: numcodecs' Blosc and CRC32 raise RuntimeError, zarr's
# CRC32C codec and a chunk of the wrong size raise ValueError.
_DECODE_ERRORS = (RuntimeError, ValueError)


def is_image_spec(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True for ``(H, W, 3)`` uint8 keys, which are stored and sampled as images."""
    return dtype == np.uint8 and len(shape) == 3 and shape[-1] == 3


def _compressor(zarr_format: int, dtype: np.dtype, image: bool):
    if zarr_format == 2:
        shuffle = numcodecs.Blosc.NOSHUFFLE if image else numcodecs.Blosc.BITSHUFFLE
        return numcodecs.Blosc(cname=BLOSC_CNAME, clevel=BLOSC_CLEVEL, shuffle=shuffle)
    return zarr.codecs.BloscCodec(
        cname=BLOSC_CNAME,
        clevel=BLOSC_CLEVEL,
        shuffle="noshuffle" if image else "bitshuffle",
        typesize=dtype.itemsize,
    )


def checksummed(zarr_format: int, compressor) -> dict[str, Any]:
    """``create_array`` keyword arguments: ``compressor`` plus a 32-bit checksum of every chunk.

    Format 2 has no codec after the compressor, so the checksum is a filter before it: numcodecs'
    ``CRC32`` (``{"id": "crc32"}``), which numcodecs has shipped since 0.0.0 with the same encoding
    (4 little-endian bytes before the chunk), so zarr 2 with the numcodecs diffusion_policy pins
    (0.10.2, 0.13.0 in its newer environment) reads these stores. Its ``location`` option (numcodecs
    0.14+) is left at the default so the stored config stays one older versions accept. The price:
    Blosc then sees bytes, so bit-shuffle of float32 keys works per byte (about 14% larger
    low-dimensional chunks on smooth trajectories; images, unshuffled uint8, are unchanged).
    Format 3 has zarr's CRC32C codec, which goes after the compressor and checks the stored bytes.
    """
    if zarr_format == 2:
        return {"filters": [numcodecs.CRC32()], "compressors": compressor}
    return {"compressors": [compressor, zarr.codecs.Crc32cCodec()]}


def has_checksum(array: zarr.Array) -> bool:
    """Whether ``array``'s chunks carry a checksum (stores written before checksums have none)."""
    codecs = (*array.filters, *array.compressors)  # format 3, sharded: the inner chunks' codecs
    return any(
        isinstance(c, zarr.codecs.Crc32cCodec) or getattr(c, "codec_id", None) in ("crc32", "crc32c", "adler32")
        for c in codecs
    )


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file beside a store: ``demos.zarr`` -> ``demos.zarr.lock``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _describe_holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if not pid.isdigit():
        return "a process that has not written its PID yet"
    state = ""
    with contextlib.suppress(OSError, IndexError):  # Linux names the state; elsewhere the PID is enough
        code = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        state = {"T": " (stopped)", "t": " (stopped by a debugger)", "D": " (waiting on I/O)"}.get(code, "")
    return f"PID {pid}{state}"


@contextlib.contextmanager
def store_lock(path: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive write lock of the store at ``path`` (which need not exist yet).

    The lock is a ``flock`` on ``lock_path(path)``; the holder writes its PID there. A waiter logs a
    warning naming the holder after ``LOCK_WARN_S`` and raises TimeoutError after ``timeout`` s.
    Not re-entrant: a process that holds it and asks again waits for itself.
    """
    file = lock_path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start, delay, warned = time.monotonic(), 0.001, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout:
                    raise TimeoutError(
                        f"{path}: gave up after {waited:.1f} s waiting for the write lock {file}, held by "
                        f"{_describe_holder(fd)}; if that writer is stopped or hung, end it (the lock is "
                        "released when it exits)"
                    ) from None
                if not warned and waited >= LOCK_WARN_S:
                    log.warning("%s: waiting for the write lock, held by %s", path, _describe_holder(fd))
                    warned = True
                time.sleep(max(min(delay, timeout - waited), 0.0))
                delay = min(2 * delay, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


def build_aside(path: Path, build: Callable[[Path], None], *, replace: bool = False) -> None:
    """Build a new store with ``build(tmp)`` in a hidden sibling directory, then rename it to ``path``.

    The caller holds ``store_lock(path)``. Readers never see a half-built store at ``path``; a builder
    killed midway leaves only its hidden directory, removed by the next build. ``replace`` swaps out
    an existing store at ``path`` (two renames; the old one is deleted after).
    """
    prefix = glob.escape(f".{path.name}")
    for stale in path.parent.glob(f"{prefix}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.building-{os.getpid()}"
    try:
        build(tmp)
        if replace and path.exists():
            old = path.parent / f".{path.name}.replaced-{os.getpid()}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normalize_schema(schema: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if not isinstance(schema, Mapping) or not schema:
        raise ValueError(f"schema must be a non-empty dict of key -> (shape, dtype), got {schema!r}")
    out = {}
    for key, spec in schema.items():
        if not isinstance(key, str) or not key or "/" in key or key.startswith("."):
            raise ValueError(f"schema key must be a non-empty name without '/' or leading '.', got {key!r}")
        if not (isinstance(spec, tuple | list) and len(spec) == 2):
            raise ValueError(f"schema[{key!r}] must be (shape_without_time, dtype), got {spec!r}")
        shape, dtype = spec
        if not (isinstance(shape, tuple | list) and all(isinstance(s, int) and s > 0 for s in shape)):
            raise ValueError(f"schema[{key!r}] shape must be a tuple of positive ints, got {shape!r}")
        dtype = np.dtype(dtype)
        if dtype.name not in ALLOWED_DTYPES:
            raise ValueError(f"schema[{key!r}] dtype must be one of {ALLOWED_DTYPES}, got {dtype.name}")
        out[key] = (tuple(shape), dtype)
    return out


def _json_value(name: str, value: Any) -> Any:
    """Numpy scalars become Python scalars; anything JSON cannot hold is an error."""
    if isinstance(value, np.generic):
        value = value.item()
    try:
        json.dumps(value)
    except TypeError as exc:
        raise ValueError(f"{name} must be JSON-serializable, got {type(value).__name__}: {value!r}") from exc
    return value


def _validate_meta(meta: Mapping[str, Any], length: int) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        raise TypeError(f"episode meta must be a dict, got {type(meta).__name__}")
    missing = [k for k in EPISODE_META_TYPES if k not in meta]
    if missing:
        raise ValueError(
            f"episode meta is missing {missing}; expected keys {list(EPISODE_META_TYPES)} "
            f"(plus optional 'length' and extra JSON values), got {sorted(meta)}"
        )
    out = {}
    for key, value in meta.items():
        value = _json_value(f"episode meta[{key!r}]", value)
        allowed = EPISODE_META_TYPES.get(key)
        # bool is an int subclass: a seed of True is a mistake, not a seed.
        bad_bool = key == "seed" and isinstance(value, bool)
        if allowed is not None and (not isinstance(value, allowed) or bad_bool):
            names = [t.__name__ for t in allowed]
            raise ValueError(f"episode meta[{key!r}] must be one of {names}, got {type(value).__name__}")
        out[key] = value
    if "length" in out and out["length"] != length:
        raise ValueError(f"episode meta['length'] is {out['length']} but the arrays have {length} steps")
    out["length"] = length
    return out


def _creation_args(schema, attrs, zarr_format, chunk_steps) -> tuple[dict, dict, dict]:
    spec = _normalize_schema(schema)
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    attrs = {} if attrs is None else dict(attrs)
    attrs = {k: _json_value(f"attrs[{k!r}]", v) for k, v in attrs.items()}
    chunk_steps = dict(chunk_steps or {})
    unknown = sorted(set(chunk_steps) - set(spec))
    if unknown:
        raise ValueError(f"chunk_steps names keys {unknown} that are not in the schema {sorted(spec)}")
    return spec, attrs, chunk_steps


def _write_empty(path: Path, spec: dict, attrs: dict, zarr_format: int, chunk_steps: dict) -> None:
    """Write an empty store at ``path`` (a fresh directory)."""
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    data = root.create_group("data")
    for key, (shape, dtype) in spec.items():
        image = is_image_spec(shape, dtype)
        steps = chunk_steps.get(key, IMAGE_CHUNK_STEPS if image else LOW_DIM_CHUNK_STEPS)
        shards = None
        if zarr_format == 3 and image:
            shards = (max(IMAGE_SHARD_STEPS // steps, 1) * steps, *shape)
        data.create_array(
            key,
            shape=(0, *shape),
            dtype=dtype,
            chunks=(steps, *shape),
            shards=shards,
            **checksummed(zarr_format, _compressor(zarr_format, dtype, image)),
        )
    meta = root.create_group("meta")
    meta.create_array(
        "episode_ends",
        shape=(0,),
        dtype="int64",
        chunks=(EPISODE_ENDS_CHUNK,),
        **checksummed(zarr_format, _compressor(zarr_format, np.dtype("int64"), image=False)),
    )
    meta.attrs.update({"episodes": []})
    keys = {k: {"shape": list(s), "dtype": d.name} for k, (s, d) in spec.items()}
    # Written last: a store without "format" is not a store.
    root.attrs.update(
        {"format": FORMAT_NAME, "version": FORMAT_VERSION, "keys": keys, "attrs": attrs, "stats": None}
    )


def _schema_text(spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> str:
    return "{" + ", ".join(f"{k}: {tuple(s)} {np.dtype(d).name}" for k, (s, d) in spec.items()) + "}"


def _open_root(path: Path, mode: str) -> zarr.Group:
    """The store's root group, or a ValueError saying what ``path`` is instead."""
    try:
        root = zarr.open_group(path, mode="r" if mode == "r" else "r+")
    except (zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        found = sorted(p.name for p in path.iterdir())
        found = f"{found[:8]}{' ...' if len(found) > 8 else ''}" if found else "an empty folder"
        raise ValueError(
            f"{path} is not a trajectory store: expected a Zarr group (.zgroup or zarr.json) holding "
            f"data/ and meta/episode_ends, found {found}"
        ) from None
    if root.attrs.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} (root attribute 'format' is missing or differs)")
    if root.attrs["version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has store version {root.attrs['version']}, expected {FORMAT_VERSION}")
    return root


@dataclass
class VerifyReport:
    """What ``TrajectoryStore.verify`` found: ``problems`` (empty when the store is sound) and notes."""

    chunks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class TrajectoryStore:
    """An append-only store of episodes; see the module docstring for layout and guarantees.

    Build one with :meth:`create`, :meth:`open` or :meth:`open_or_create`, never with the constructor.
    ``lock_timeout``: seconds a writer waits for another writer's lock before a TimeoutError.
    """

    def __init__(self, path: Path, mode: str, lock_timeout: float = LOCK_TIMEOUT_S):
        self.path = path
        self.mode = mode
        self.lock_timeout = lock_timeout
        #: What opening for appending cut away (a torn tail left by a killed writer), one line each.
        self.repairs: list[str] = []
        root = _open_root(path, mode)
        self._schema = {
            key: (tuple(spec["shape"]), np.dtype(spec["dtype"])) for key, spec in root.attrs["keys"].items()
        }
        self._load_commit()
        self._check_layout()

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        schema: Mapping[str, tuple[tuple[int, ...], Any]],
        attrs: Mapping[str, Any] | None = None,
        *,
        zarr_format: Literal[2, 3] = 2,
        chunk_steps: Mapping[str, int] | None = None,
        overwrite: bool = False,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> TrajectoryStore:
        """Create an empty store and return it open for appending.

        Args:
            path: directory to create (conventionally ending in ``.zarr``).
            schema: ``{key: (shape_without_time, dtype)}``, e.g.
                ``{"agentview_image": ((84, 84, 3), "uint8"), "action": ((7,), "float32")}``.
            attrs: store-level JSON attributes (fps, env and camera config, ...).
            zarr_format: 2 (default; readable by zarr-python 2 and diffusion_policy) or 3, which
                groups image chunks into shards of ``IMAGE_SHARD_STEPS`` frames.
            chunk_steps: steps per chunk for some keys; default 4 for images, 1024 otherwise.
            overwrite: replace an existing store at ``path`` instead of raising.
            lock_timeout: seconds to wait for the store's lock (see the module docstring).

        Several processes that may start on the same new path should call :meth:`open_or_create`.
        """
        spec, attrs, chunk_steps = _creation_args(schema, attrs, zarr_format, chunk_steps)
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        with store_lock(path, lock_timeout):
            if path.exists() and not overwrite:  # another process created it while we waited
                raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
            build_aside(path, lambda tmp: _write_empty(tmp, spec, attrs, zarr_format, chunk_steps),
                        replace=overwrite)
            return cls(path, "a", lock_timeout)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        schema: Mapping[str, tuple[tuple[int, ...], Any]],
        attrs: Mapping[str, Any] | None = None,
        *,
        zarr_format: Literal[2, 3] = 2,
        chunk_steps: Mapping[str, int] | None = None,
        lock_timeout: float = LOCK_TIMEOUT_S,
    ) -> TrajectoryStore:
        """Open the store at ``path`` for appending, creating it first if it does not exist.

        Safe when several processes start on the same new path at once: the first creates the
        store under the lock, the others open what it created. ``attrs``, ``zarr_format`` and
        ``chunk_steps`` apply only to a new store. An existing store must have the same schema
        (a ValueError names both); its attributes are not compared, since some change as the store
        grows (a next seed): callers check the ones that must match.
        """
        spec, attrs, chunk_steps = _creation_args(schema, attrs, zarr_format, chunk_steps)
        path = Path(path)
        with store_lock(path, lock_timeout):
            if not path.exists():
                build_aside(path, lambda tmp: _write_empty(tmp, spec, attrs, zarr_format, chunk_steps))
            store = cls(path, "a", lock_timeout)
            if store.schema != spec:
                raise ValueError(
                    f"{path} holds the schema {_schema_text(store.schema)}, but the caller needs "
                    f"{_schema_text(spec)}: use another output (or delete {path})"
                )
            store.repairs = store._repair(remove_partial_files=True)
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike, mode: Literal["r", "a"] = "r", *, lock_timeout: float = LOCK_TIMEOUT_S
    ) -> TrajectoryStore:
        """Open an existing store: ``"r"`` to read, ``"a"`` to append (repairs a torn tail first).

        Raises:
            FileNotFoundError: nothing at ``path``.
            ValueError: ``path`` is not a complete trajectory store; the message says what is missing.
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no trajectory store at {path}")
        store = cls(path, mode, lock_timeout)
        if mode == "a":
            with store._write_lock():
                store.repairs = store._repair(remove_partial_files=True)
        return store

    # ----------------------------------------------------------------- reading
    @property
    def schema(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape_without_time, dtype)}``."""
        return dict(self._schema)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self._schema)

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(k for k, (s, d) in self._schema.items() if is_image_spec(s, d))

    @property
    def zarr_format(self) -> int:
        return self._root.metadata.zarr_format

    @property
    def attrs(self) -> dict[str, Any]:
        """Store-level attributes given at creation (a copy)."""
        return copy.deepcopy(self._root.attrs["attrs"])

    @property
    def n_episodes(self) -> int:
        return len(self._episodes)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """int64 cumulative end index of each committed episode (a copy)."""
        return self._ends.copy()

    def episode_range(self, i: int) -> tuple[int, int]:
        """``(start, stop)`` step indices of episode ``i`` in the data arrays."""
        i = self._check_episode(i)
        return (int(self._ends[i - 1]) if i else 0), int(self._ends[i])

    def episode(self, i: int, keys: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Arrays of episode ``i`` (all keys, or ``keys``), each ``(T, *shape)``."""
        start, stop = self.episode_range(i)
        return {key: self.read(key, start, stop) for key in self._check_keys(keys)}

    def episode_meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i``: task, seed, success, source, length and any extras."""
        return copy.deepcopy(self._episodes[self._check_episode(i)])

    def array(self, key: str) -> zarr.Array:
        """The zarr array behind ``key``. Steps past ``n_steps`` are uncommitted: never read them.

        Prefer :meth:`read`, which turns a damaged chunk into an error naming the file and episode.
        """
        self._check_keys([key])
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = self._root["data"][key]
        return array

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Steps ``start:stop`` (default: every committed step) of ``key`` as a numpy array.

        Raises:
            ValueError: a chunk does not decode or fails its checksum; the message names the chunk
                file, the key, the steps and episodes it holds, and what the decoder found.
        """
        stop = self.n_steps if stop is None else stop
        return self._read_rows(self.array(key), f"data/{key}", start, stop)

    def refresh(self) -> None:
        """Re-read the committed episodes (to see episodes appended by another process)."""
        self._load_commit()

    # ----------------------------------------------------------------- writing
    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                    index: int | None = None) -> int | None:
        """Append one episode atomically and return its index (None: not written, see ``index``).

        Args:
            data: ``{key: array}`` with exactly the schema's keys; each array ``(T, *shape)`` with
                the schema's dtype and the same ``T >= 1`` for every key.
            meta: ``{"task": str, "seed": int | None, "success": bool | None, "source": str}``
                plus optional extra JSON values; ``length`` is filled in.
            index: the index the episode must get, for writers that fill one store side by side (feature
                caches): if another process has already appended episode ``index``, nothing is written and
                None is returned. None appends at the end.

        Raises:
            ValueError: on any mismatch with the schema (TypeError if ``data`` or a value is not a
                dict or numpy array), or ``index`` past the end; the store is left unchanged.
        """
        self._require_writable()
        arrays = self._validate_data(data)
        length = next(iter(arrays.values())).shape[0]
        record = _validate_meta(meta, length)
        with self._write_lock():
            self._repair()
            end, n = self.n_steps, self.n_episodes
            if index is not None and index < n:  # another writer appended it first
                return None
            if index is not None and index > n:
                raise ValueError(f"{self.path}: expected to append episode {index}, but the store holds {n} episodes")
            for key, value in arrays.items():
                array = self._root["data"][key]
                array.resize((end + length, *array.shape[1:]))
                array[end : end + length] = value
            ends = self._root["meta"]["episode_ends"]
            ends.resize((n + 1,))
            ends[n] = end + length
            # The commit: one atomic file replace (see the module docstring).
            self._root["meta"].attrs.update({"episodes": [*self._episodes, record]})
            self._load_commit()
        return n

    def update_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the store-level attributes."""
        self._require_writable()
        new = {k: _json_value(f"attrs[{k!r}]", v) for k, v in attrs.items()}
        with self._write_lock():
            root = zarr.open_group(self.path, mode="r+")
            root.attrs.update({"attrs": {**root.attrs["attrs"], **new}})
            self._root = root

    # ----------------------------------------------------------------- statistics
    def compute_stats(
        self, keys: list[str] | tuple[str, ...] | None = None
    ) -> dict[str, dict[str, np.ndarray]]:
        """Per-key min, max, mean and std over every committed step; stored in the store if writable.

        Images are reduced per channel (shape ``(3,)``), other keys per element (their shape).

        Raises:
            ValueError: a key holds NaN or infinity (naming the key, episode and step): statistics,
                and the normalization and training built on them, would be NaN.
        """
        stats = {}
        for key in self._check_keys(keys):
            shape, _ = self._schema[key]
            out_shape = shape[-1:] if key in self.image_keys else shape
            count = 0
            total = np.zeros(out_shape, np.float64)
            total_sq = np.zeros(out_shape, np.float64)
            lo = np.full(out_shape, np.inf)
            hi = np.full(out_shape, -np.inf)
            for i in range(self.n_episodes):
                start, stop = self.episode_range(i)
                x = self.read(key, start, stop)
                self._check_finite(key, i, x)
                x = x.astype(np.float64).reshape(-1, *out_shape)  # images: (T*H*W, 3); others unchanged
                count += x.shape[0]
                total += x.sum(axis=0)
                total_sq += np.square(x).sum(axis=0)
                lo = np.minimum(lo, x.min(axis=0))
                hi = np.maximum(hi, x.max(axis=0))
            if count == 0:
                raise ValueError("cannot compute statistics of an empty store")
            mean = total / count
            std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
            stats[key] = {"min": lo, "max": hi, "mean": mean, "std": std}
        if self.mode == "a":
            record = {
                "n_episodes": self.n_episodes,
                "keys": {k: {s: v.tolist() for s, v in d.items()} for k, d in stats.items()},
            }
            with self._write_lock():
                root = zarr.open_group(self.path, mode="r+")
                root.attrs.update({"stats": record})
                self._root = root
        return stats

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Statistics saved by :meth:`compute_stats`; raises if missing or older than the episodes."""
        root = zarr.open_group(self.path, mode="r")
        record = root.attrs["stats"]
        if record is None:
            raise ValueError(f"{self.path} has no statistics: call compute_stats() on a writable store")
        if record["n_episodes"] != self.n_episodes:
            raise ValueError(
                f"statistics in {self.path} cover {record['n_episodes']} episodes but the store has "
                f"{self.n_episodes}: call compute_stats() again"
            )
        return {
            key: {name: np.asarray(v, np.float64) for name, v in d.items()}
            for key, d in record["keys"].items()
        }

    # ----------------------------------------------------------------- integrity
    def verify(self) -> VerifyReport:
        """Decode every committed chunk of every array (checking its checksum where it has one) and
        check that the arrays' lengths agree with ``meta/episode_ends``, as diffusion_policy's
        ``ReplayBuffer`` asserts. Arrays written before checksums are a note, not a problem."""
        report = VerifyReport()
        ends = self._root["meta"]["episode_ends"]
        arrays = {f"data/{k}": self._root["data"][k] for k in self.keys} | {"meta/episode_ends": ends}
        unchecked = [name for name, array in arrays.items() if not has_checksum(array)]
        if unchecked:
            report.notes.append(
                f"{len(unchecked)} of {len(arrays)} arrays have no chunk checksums (written before "
                f"checksums were added; decoding checked only): {unchecked}"
            )
        damaged = set()
        for name, array in arrays.items():
            length = self.n_episodes if array is ends else self.n_steps
            rows = (array.shards or array.chunks)[0]
            for c in range(-(-length // rows)):
                try:
                    array[c * rows : min((c + 1) * rows, length)]
                    report.chunks += 1
                except _DECODE_ERRORS as exc:
                    report.problems.append(self._bad_chunk(array, name, c, exc))
                    damaged.add(name)
        torn = "left by a writer killed mid-append: run `toto-store repair`"
        if ends.shape[0] != self.n_episodes:
            report.problems.append(
                f"meta/episode_ends has {ends.shape[0]} entries but {self.n_episodes} episodes are "
                f"committed ({torn})"
            )
        elif "meta/episode_ends" not in damaged:
            stored = ends[:]
            if not np.array_equal(stored, self._ends):
                bad = int(np.argmax(stored != self._ends))
                report.problems.append(
                    f"meta/episode_ends[{bad}] is {stored[bad]}, expected {self._ends[bad]} from the "
                    f"committed episodes' lengths (run `toto-store repair` to rewrite it)"
                )
        for name, array in arrays.items():
            if array is not ends and array.shape[0] != self.n_steps:
                report.problems.append(
                    f"{name} has {array.shape[0]} steps but episode_ends[-1] is {self.n_steps} ({torn})"
                )
        return report

    def repair(self) -> list[str]:
        """Cut a torn tail back to the last committed episode (as ``open(mode="a")`` does) and
        rewrite ``meta/episode_ends`` if it disagrees; returns what changed, one line each."""
        self._require_writable()
        with self._write_lock():
            return self._repair(remove_partial_files=True)

    # ----------------------------------------------------------------- internals
    def _load_commit(self) -> None:
        # Re-open the groups so metadata written by other processes is seen.
        root = zarr.open_group(self.path, mode="r" if self.mode == "r" else "r+")
        episodes = root["meta"].attrs["episodes"]
        self._episodes = list(episodes)
        self._ends = np.cumsum([e["length"] for e in episodes], dtype=np.int64)
        self._root = root
        self._arrays: dict[str, zarr.Array] = {}

    def _repair(self, remove_partial_files: bool = False) -> list[str]:
        """Cut away anything a killed writer left past the last commit (caller holds the lock).

        Every append starts with this; ``remove_partial_files`` (a walk over the whole store) is
        done once, on ``open(mode="a")``. Returns what was changed, one line each.
        """
        self._load_commit()
        changes = []
        end, n = self.n_steps, self.n_episodes
        for key in self.keys:
            array = self._root["data"][key]
            if array.shape[0] != end:
                changes.append(f"cut data/{key} from {array.shape[0]} to {end} steps")
                array.resize((end, *array.shape[1:]))
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] != n:
            changes.append(f"cut meta/episode_ends from {ends.shape[0]} to {n} entries")
            ends.resize((n,))
        if n:
            try:
                agree = np.array_equal(ends[:], self._ends)
            except _DECODE_ERRORS:  # a damaged chunk: the committed episodes say what it held
                agree = False
            if not agree:
                changes.append("rewrote meta/episode_ends from the committed episodes' lengths")
                ends[:] = self._ends
        if remove_partial_files:
            # Temporary files of writes that never reached their rename.
            for partial in self.path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
        self._arrays = {}
        return changes

    def _check_layout(self) -> None:
        """The arrays the root attributes promise exist, with their shapes, and hold every committed step."""
        if "meta" not in self._root or "episode_ends" not in self._root["meta"]:
            found = sorted(self._root["meta"].keys()) if "meta" in self._root else "no meta group"
            raise ValueError(
                f"{self.path} is not a complete trajectory store: expected the array meta/episode_ends "
                f"(the cumulative end of each episode), found {found}"
            )
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] < self.n_episodes:
            raise ValueError(
                f"{self.path}: meta/episode_ends has {ends.shape[0]} entries, expected at least "
                f"{self.n_episodes} (one per committed episode)"
            )
        have = sorted(self._root["data"].array_keys()) if "data" in self._root else []
        for key, (shape, dtype) in self._schema.items():
            if key not in have:
                raise ValueError(
                    f"{self.path} is not a complete trajectory store: expected the array data/{key} "
                    f"(declared in the root attribute 'keys'), found data/ holding {have}"
                )
            array = self._root["data"][key]
            if array.shape[1:] != shape or array.dtype != dtype:
                raise ValueError(
                    f"{self.path}: data/{key} is {array.shape[1:]} {array.dtype} per step, expected "
                    f"{shape} {dtype.name} (the root attribute 'keys')"
                )
            if array.shape[0] < self.n_steps:
                raise ValueError(
                    f"{self.path}: data/{key} has {array.shape[0]} steps, expected at least "
                    f"{self.n_steps} (the committed episodes' total length): data was lost"
                )

    def _read_rows(self, array: zarr.Array, name: str, start: int, stop: int) -> np.ndarray:
        try:
            return array[start:stop]
        except _DECODE_ERRORS as exc:
            # Find the chunk that fails, to name its file (the read above may span many chunks).
            rows = (array.shards or array.chunks)[0]
            for c in range(start // rows, -(-stop // rows)):
                lo, hi = c * rows, min((c + 1) * rows, array.shape[0])
                try:
                    array[lo:hi]
                except _DECODE_ERRORS as chunk_exc:
                    raise ValueError(self._bad_chunk(array, name, c, chunk_exc)) from chunk_exc
            raise ValueError(f"{self.path}: reading {name} steps {start}..{stop - 1} failed: {exc}") from exc

    def _bad_chunk(self, array: zarr.Array, name: str, c: int, exc: Exception) -> str:
        """One line on a chunk that does not decode: its file, key, steps, episodes, expected vs found."""
        rows = (array.shards or array.chunks)[0]
        lo, hi = c * rows, min((c + 1) * rows, array.shape[0])
        file = self.path / array.path / array.metadata.encode_chunk_key((c,) + (0,) * (array.ndim - 1))
        found = f"a file of {file.stat().st_size} bytes" if file.is_file() else "no file"
        if name == "meta/episode_ends":
            where = f"entries {lo}..{hi - 1}"
        else:
            first, last = np.searchsorted(self._ends, [lo, hi - 1], side="right")
            if first >= self.n_episodes:
                episodes = "past the committed episodes"
            else:
                last = min(last, self.n_episodes - 1)
                episodes = f"episode {first}" if first == last else f"episodes {first}..{last}"
            where = f"steps {lo}..{hi - 1}, {episodes}"
        check = "with its checksum" if has_checksum(array) else "(written without checksums)"
        return (
            f"{file}: chunk {c} of key {name!r} ({where}) is damaged: expected {hi - lo} steps of "
            f"{array.shape[1:]} {array.dtype} {check}, found {found} that fails to decode "
            f"({type(exc).__name__}: {exc})"
        )

    def _check_finite(self, key: str, i: int, x: np.ndarray) -> None:
        if x.dtype.kind != "f":
            return
        bad = ~np.isfinite(x.reshape(len(x), -1))
        if bad.any():
            step, col = np.argwhere(bad)[0]
            value = x.reshape(len(x), -1)[step, col]
            raise ValueError(
                f"{self.path}: key {key!r} of episode {i} holds {int(bad.sum())} non-finite values "
                f"(first: {value} at step {step}); expected finite numbers: fix or drop the episode"
            )

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        with store_lock(self.path, self.lock_timeout):
            yield

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; use TrajectoryStore.open(path, mode='a')")

    def _check_episode(self, i: int) -> int:
        n = self.n_episodes
        if not isinstance(i, int | np.integer) or not -n <= i < n:
            raise IndexError(f"episode index {i!r} out of range for a store of {n} episodes")
        return int(i) % n

    def _check_keys(self, keys) -> tuple[str, ...]:
        if keys is None:
            return self.keys
        unknown = [k for k in keys if k not in self._schema]
        if unknown:
            raise KeyError(f"unknown keys {unknown}; the store has {list(self.keys)}")
        return tuple(keys)

    def _validate_data(self, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(data, Mapping):
            raise TypeError(f"episode data must be a dict of arrays, got {type(data).__name__}")
        missing = sorted(set(self._schema) - set(data))
        unknown = sorted(set(data) - set(self._schema))
        if missing or unknown:
            raise ValueError(
                f"episode keys do not match the schema: missing {missing}, unknown {unknown}; "
                f"expected {sorted(self._schema)}"
            )
        out, lengths = {}, {}
        for key, (shape, dtype) in self._schema.items():
            value = data[key]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"data[{key!r}] must be a numpy array, got {type(value).__name__}")
            if value.dtype != dtype:
                raise ValueError(
                    f"data[{key!r}] must have dtype {dtype.name}, got {value.dtype.name} "
                    f"(convert with .astype(np.{dtype.name}))"
                )
            if value.ndim != len(shape) + 1 or value.shape[1:] != shape:
                raise ValueError(
                    f"data[{key!r}] must have shape (T, {', '.join(map(str, shape))}), got {value.shape}"
                )
            lengths[key] = value.shape[0]
            out[key] = value
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all keys must have the same number of steps, got {lengths}")
        if next(iter(lengths.values())) == 0:
            raise ValueError("an episode must have at least one step, got 0")
        return out

    def __repr__(self) -> str:
        return (
            f"TrajectoryStore({str(self.path)!r}, mode={self.mode!r}, episodes={self.n_episodes}, "
            f"steps={self.n_steps}, keys={list(self.keys)})"
        )
