"""Episodic trajectory store on Zarr, in diffusion_policy's ReplayBuffer layout.

Layout (readable by diffusion_policy's ``ReplayBuffer`` and any zarr client)::

    store.zarr/
      data/<key>          one array per key, time first, chunked along time only
      meta/episode_ends   int64, cumulative end index of each episode
      meta  (attributes)  {"episodes": [{task, seed, success, source, length, ...}, ...]}
      root  (attributes)  {"format", "version", "keys", "attrs", "stats"}

Images are uint8 ``(T, H, W, 3)``; low-dimensional keys are float32 ``(T, D)``. Every array is
compressed losslessly with Blosc zstd (images 4 frames to a chunk; codec and chunking chosen by
``bench/bench_store.py``).

Atomic appends. ``add_episode`` writes the episode's arrays past the committed end, then
``meta/episode_ends``, then commits by rewriting the ``meta`` attributes, a single small file
that zarr's local store replaces atomically (write to a temporary file, then rename). The list
of episodes in that file is the only thing readers of this class trust: a writer killed at any
point (even ``kill -9``) leaves every earlier episode intact and no partial episode visible,
and the next writer repairs the tail (truncates the arrays and ``episode_ends`` to the last
committed episode). Writers serialize on an advisory lock (``flock``) on the store directory, so
several processes may append to the same store.

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
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
import zarr.codecs

FORMAT_NAME = "toto-trajectory-store"
FORMAT_VERSION = 1

# Per-episode metadata every episode must carry, with the types allowed for each value.
EPISODE_META_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,),
    "seed": (int, type(None)),
    "success": (bool, type(None)),
    "source": (str,),
}

ALLOWED_DTYPES = ("uint8", "float32", "float64", "int32", "int64", "bool")

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


class TrajectoryStore:
    """An append-only store of episodes; see the module docstring for layout and guarantees.

    Build one with :meth:`create` or :meth:`open`, never with the constructor.
    """

    def __init__(self, path: Path, root: zarr.Group, mode: str):
        self.path = path
        self.mode = mode
        self._root = root
        self._schema = {
            key: (tuple(spec["shape"]), np.dtype(spec["dtype"])) for key, spec in root.attrs["keys"].items()
        }
        self._load_commit()

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
        """
        spec = _normalize_schema(schema)
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
        attrs = {} if attrs is None else dict(attrs)
        attrs = {k: _json_value(f"attrs[{k!r}]", v) for k, v in attrs.items()}
        chunk_steps = dict(chunk_steps or {})
        unknown = sorted(set(chunk_steps) - set(spec))
        if unknown:
            raise ValueError(f"chunk_steps names keys {unknown} that are not in the schema {sorted(spec)}")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")

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
                compressors=_compressor(zarr_format, dtype, image),
            )
        meta = root.create_group("meta")
        meta.create_array(
            "episode_ends",
            shape=(0,),
            dtype="int64",
            chunks=(EPISODE_ENDS_CHUNK,),
            compressors=_compressor(zarr_format, np.dtype("int64"), image=False),
        )
        meta.attrs.update({"episodes": []})
        keys = {k: {"shape": list(s), "dtype": d.name} for k, (s, d) in spec.items()}
        # Written last: a store without "format" is not a store, so a half-created one never opens.
        root.attrs.update(
            {"format": FORMAT_NAME, "version": FORMAT_VERSION, "keys": keys, "attrs": attrs, "stats": None}
        )
        return cls(path, root, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: Literal["r", "a"] = "r") -> TrajectoryStore:
        """Open an existing store: ``"r"`` to read, ``"a"`` to append (repairs a torn tail first)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no trajectory store at {path}")
        root = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        if root.attrs.get("format") != FORMAT_NAME:
            raise ValueError(f"{path} is not a {FORMAT_NAME} (root attribute 'format' is missing or differs)")
        if root.attrs["version"] != FORMAT_VERSION:
            raise ValueError(f"{path} has store version {root.attrs['version']}, expected {FORMAT_VERSION}")
        store = cls(path, root, mode)
        if mode == "a":
            with store._write_lock():
                store._repair(remove_partial_files=True)
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
        return {key: self.array(key)[start:stop] for key in self._check_keys(keys)}

    def episode_meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i``: task, seed, success, source, length and any extras."""
        return copy.deepcopy(self._episodes[self._check_episode(i)])

    def array(self, key: str) -> zarr.Array:
        """The zarr array behind ``key``. Steps past ``n_steps`` are uncommitted: never read them."""
        self._check_keys([key])
        array = self._arrays.get(key)
        if array is None:
            array = self._arrays[key] = self._root["data"][key]
        return array

    def refresh(self) -> None:
        """Re-read the committed episodes (to see episodes appended by another process)."""
        self._load_commit()

    # ----------------------------------------------------------------- writing
    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int:
        """Append one episode atomically and return its index.

        Args:
            data: ``{key: array}`` with exactly the schema's keys; each array ``(T, *shape)`` with
                the schema's dtype and the same ``T >= 1`` for every key.
            meta: ``{"task": str, "seed": int | None, "success": bool | None, "source": str}``
                plus optional extra JSON values; ``length`` is filled in.

        Raises:
            ValueError: on any mismatch with the schema (TypeError if ``data`` or a value is not a
                dict or numpy array); the store is left unchanged.
        """
        self._require_writable()
        arrays = self._validate_data(data)
        length = next(iter(arrays.values())).shape[0]
        record = _validate_meta(meta, length)
        with self._write_lock():
            self._repair()
            end, n = self.n_steps, self.n_episodes
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
                x = self.array(key)[start:stop].astype(np.float64)
                x = x.reshape(-1, *out_shape)  # images: (T*H*W, 3); others unchanged
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

    # ----------------------------------------------------------------- internals
    def _load_commit(self) -> None:
        # Re-open the groups so metadata written by other processes is seen.
        root = zarr.open_group(self.path, mode="r" if self.mode == "r" else "r+")
        episodes = root["meta"].attrs["episodes"]
        self._episodes = list(episodes)
        self._ends = np.cumsum([e["length"] for e in episodes], dtype=np.int64)
        self._root = root
        self._arrays: dict[str, zarr.Array] = {}

    def _repair(self, remove_partial_files: bool = False) -> None:
        """Cut away anything a killed writer left past the last commit (caller holds the lock).

        Every append starts with this; ``remove_partial_files`` (a walk over the whole store) is
        done once, on ``open(mode="a")``.
        """
        self._load_commit()
        end, n = self.n_steps, self.n_episodes
        for key in self.keys:
            array = self._root["data"][key]
            if array.shape[0] != end:
                array.resize((end, *array.shape[1:]))
        ends = self._root["meta"]["episode_ends"]
        if ends.shape[0] != n:
            ends.resize((n,))
        if n and not np.array_equal(ends[:], self._ends):
            ends[:] = self._ends
        if remove_partial_files:
            # Temporary files of writes that never reached their rename.
            for partial in self.path.rglob("*.partial"):
                partial.unlink(missing_ok=True)
        self._arrays = {}

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

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
