"""Convert between a :class:`~toto_robot.store.TrajectoryStore` and a local LeRobotDataset v3.

One naming, LeRobot's, shared by export, import and the LeRobot plugins (plugins/):

    store key                                    LeRobot feature
    <camera>_image  (H, W, 3) uint8              observation.images.<camera>
    state keys      1-D float32                  observation.state, one vector, names "<key>.<component>"
    object state    object, object_pos           observation.environment_state, names likewise
    action                                       action (names: the contract's components, else "action.<i>")
    reward                                       next.reward
    any other key                                observation.<key>

State keys are packed in the shape contract's order (toto_robot/shapes.py ROBOSUITE_PANDA.state), then the
store's other 1-D float32 keys in store order; each entry is named "<key>.<component>" ("robot0_eef_pos.x",
the contract's component names) or "<key>.<i>". The store's ``robot_type`` attribute becomes the dataset's.
Importing reverses this, splitting a packed vector by the key before each name's first ``.``; it also reads the
older naming (``observation.<key>`` per key, ``observation.images.<camera>_image``, ``observation.reward``) and
LeRobot recordings, whose ``observation.state`` becomes one key ``state`` unless its names are all
"<key>.<component>". Low-dimensional values survive a round trip exactly.
Images are written as mp4 video by default (lossy: :func:`toto_robot.image_metrics.psnr_uint8` measures the loss) or, with
``use_videos=False``, as PNG images inside the parquet files (lossless).

The store's per-episode metadata (seed, success, source, extras) and store attributes have no
place in LeRobot's schema, so an export also writes them to ``meta/toto_store.json``, which an
import reads back when present. Both directions work offline on local directories.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from toto_robot.image_metrics import psnr_uint8
from toto_robot.shapes import (
    IMAGE_SUFFIX,
    OBJECT_KEYS,
    ROBOSUITE_PANDA,
    ROBOSUITE_PANDA_COMPONENTS,
    camera_name,
    image_key,
)
from toto_robot.store import TrajectoryStore, is_image_spec

# Frame fields LeRobot adds to every dataset; they are bookkeeping, not data.
LEROBOT_DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
SIDECAR = "meta/toto_store.json"
# PyAV is the decoder that works everywhere LeRobot does; naming it skips LeRobot's noisy probe.
VIDEO_BACKEND = "pyav"


OBS_STATE, OBS_ENV_STATE, OBS_IMAGES, REWARD = (
    "observation.state", "observation.environment_state", "observation.images", "next.reward")
VECTOR_FEATURES = (OBS_STATE, OBS_ENV_STATE)  # features that pack several store keys


def vector_names(key: str, size: int) -> list[str]:
    """Names of a vector key's entries: the contract's components when it has them ("robot0_eef_pos.x"; the
    action's plain "dx"), else the index ("object.0")."""
    components = ROBOSUITE_PANDA_COMPONENTS.get(key)
    if components is None or len(components) != size:
        components = tuple(str(i) for i in range(size))
    return list(components) if key == "action" else [f"{key}.{c}" for c in components]


def feature_names(schema: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, str]:
    """Store key -> LeRobot feature name, for a store's schema ``{key: (shape, dtype)}``; ordered as the
    features are laid out (keys packed into observation.state / environment_state in packing order)."""
    images = {k for k, (shape, dtype) in schema.items() if is_image_spec(tuple(shape), np.dtype(dtype))}
    packable = [k for k, (shape, dtype) in schema.items()
                if k not in images and k not in ("action", "reward") and len(shape) == 1
                and np.dtype(dtype) == np.float32]
    env_state = [k for k in OBJECT_KEYS if k in packable]
    state = [k for k in ROBOSUITE_PANDA.state_keys if k in packable]
    state += [k for k in packable if k not in state and k not in env_state]
    names = {k: f"{OBS_IMAGES}.{camera_name(k) if k.endswith(IMAGE_SUFFIX) else k}" for k in images}
    names |= dict.fromkeys(state, OBS_STATE) | dict.fromkeys(env_state, OBS_ENV_STATE)
    for key in schema:
        if key not in names:
            names[key] = {"action": "action", "reward": REWARD}.get(key, f"observation.{key}")
    return names


def store_key_name(feature: str) -> str:
    """LeRobot feature name (not a packed vector) -> store key: the camera's ``<camera>_image`` for an image,
    the name without its ``observation.`` / ``next.`` prefix otherwise (old exports' names included)."""
    if feature.startswith(OBS_IMAGES + "."):
        camera = feature[len(OBS_IMAGES) + 1 :].replace(".", "_")
        return camera if camera.endswith(IMAGE_SUFFIX) else image_key(camera)
    for prefix in ("observation.", "next."):
        if feature.startswith(prefix):
            feature = feature[len(prefix) :]
            break
    return feature.replace(".", "_")


def split_vector(feature: str, names: list[str] | None, size: int) -> list[tuple[str, int]]:
    """A packed vector feature -> its store keys with their sizes, in order. Names "<key>.<component>" in
    contiguous runs give one key per run; anything else is one key named after the feature ("state")."""
    whole = [(store_key_name(feature), size)]
    if names is None or len(names) != size or not all("." in str(n) for n in names):
        return whole
    runs: list[tuple[str, int]] = []
    for name in names:
        key = str(name).split(".")[0]
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        elif any(k == key for k, _ in runs) or not key:
            return whole  # a key in two places: not our packing
        else:
            runs.append((key, 1))
    return runs


def read_json(path: Path) -> Any:
    """A JSON file, or a ValueError naming it when it does not parse (a cut copy, say)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: expected JSON, found a file that does not parse ({exc})") from exc


def _load_lerobot():
    # Imported on use: lerobot pulls in datasets, pandas and the video stack (seconds to import).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SVT_LOG", "1")  # libsvtav1: errors only, not its per-video banner
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import decode_video_frames

    return LeRobotDataset, decode_video_frames


def export_lerobot(
    store: TrajectoryStore | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    fps: int | None = None,
    use_videos: bool = True,
    progress: bool = True,
) -> Path:
    """Write every episode of ``store`` to a new LeRobotDataset v3 directory ``out_dir``.

    Args:
        store: a store or its path.
        out_dir: directory to create; must not exist.
        repo_id: dataset id recorded in the metadata (default ``local/<out_dir name>``).
        fps: frame rate; default the store's ``fps`` attribute.
        use_videos: mp4 video (True, LeRobot's default codec) or lossless PNG frames (False).
        progress: show a progress bar over episodes.

    Returns:
        ``out_dir``.
    """
    if not isinstance(store, TrajectoryStore):
        store = TrajectoryStore.open(store, mode="r")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; LeRobot datasets are written to a new directory")
    if fps is None:
        if "fps" not in store.attrs:
            raise ValueError(f"{store.path} has no 'fps' attribute: pass fps explicitly")
        fps = store.attrs["fps"]
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    if store.n_episodes == 0:
        raise ValueError(f"{store.path} has no episodes to export")

    LeRobotDataset, _ = _load_lerobot()
    # Written beside out_dir and renamed into place: a failed export leaves nothing under out_dir's name.
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_lerobot(LeRobotDataset, store, tmp, repo_id or f"local/{out_dir.name}", fps, use_videos, progress)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_lerobot(LeRobotDataset, store: TrajectoryStore, out_dir: Path, repo_id: str, fps: int,
                   use_videos: bool, progress: bool) -> None:
    images = set(store.image_keys)
    names = feature_names(store.schema)
    features: dict[str, dict] = {}
    packed: dict[str, list[str]] = {}  # vector feature -> its store keys, in order
    for key, feature in names.items():
        shape, dtype = store.schema[key]
        if key in images:
            kind = "video" if use_videos else "image"
            features[feature] = {"dtype": kind, "shape": shape, "names": ["height", "width", "channels"]}
        elif feature in VECTOR_FEATURES:
            packed.setdefault(feature, []).append(key)
            spec = features.setdefault(feature, {"dtype": "float32", "shape": (0,), "names": []})
            spec["names"] += vector_names(key, shape[0])
            spec["shape"] = (len(spec["names"]),)
        else:
            vector = len(shape) == 1 and key != "reward"
            features[feature] = {"dtype": dtype.name, "shape": shape,
                                 "names": vector_names(key, shape[0]) if vector else None}

    dataset = LeRobotDataset.create(
        repo_id,
        fps=fps,
        features=features,
        root=out_dir,
        robot_type=store.attrs.get("robot_type"),  # an optional attribute (older stores lack it)
        use_videos=use_videos,
        video_backend=VIDEO_BACKEND,
    )
    for i in tqdm(range(store.n_episodes), desc="export episodes", disable=not progress):
        data, task = store.episode(i), store.episode_meta(i)["task"]
        columns = {names[key]: value for key, value in data.items() if names[key] not in packed}
        columns |= {feature: np.concatenate([data[k] for k in keys], axis=1) for feature, keys in packed.items()}
        for t in range(store.episode_meta(i)["length"]):
            dataset.add_frame({feature: value[t] for feature, value in columns.items()} | {"task": task})
        dataset.save_episode()
    dataset.finalize()

    sidecar = {
        "attrs": store.attrs,
        "episodes": [store.episode_meta(i) for i in range(store.n_episodes)],
        "keys": dict(zip(store.keys, (names[k] for k in store.keys), strict=True)),  # in the store's order
    }
    (out_dir / SIDECAR).write_text(json.dumps(sidecar, indent=1))


def import_lerobot(
    lerobot_dir: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    repo_id: str | None = None,
    zarr_format: int = 2,
    progress: bool = True,
) -> TrajectoryStore:
    """Read a local LeRobotDataset v3 directory into a new store at ``store_path``.

    Every non-bookkeeping feature becomes a key: video and image features as uint8
    ``(T, H, W, 3)``, the rest with their LeRobot dtype and shape. Episode metadata comes from
    ``meta/toto_store.json`` when the dataset was exported by :func:`export_lerobot`, otherwise
    ``task`` is the episode's first LeRobot task, ``seed`` and ``success`` are None and
    ``source`` names the dataset.
    """
    lerobot_dir = Path(lerobot_dir)
    info_path = lerobot_dir / "meta" / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{lerobot_dir} is not a LeRobotDataset directory (no meta/info.json)")
    info = read_json(info_path)
    missing = [k for k in ("codebase_version", "features") if k not in info]
    if missing:
        raise ValueError(f"{info_path}: expected the LeRobotDataset keys {missing}, found only {sorted(info)}")
    if info["codebase_version"] != "v3.0":
        raise ValueError(f"{lerobot_dir} is LeRobotDataset {info['codebase_version']}; only v3.0 is supported")
    if not (lerobot_dir / "data").is_dir():
        raise FileNotFoundError(f"{lerobot_dir}: expected the frames in {lerobot_dir / 'data'} (parquet files), "
                                "found no such directory")
    LeRobotDataset, decode_video_frames = _load_lerobot()
    repo_id = repo_id or f"local/{lerobot_dir.name}"
    dataset = LeRobotDataset(repo_id, root=lerobot_dir, video_backend=VIDEO_BACKEND)
    meta = dataset.meta

    schema: dict[str, tuple[tuple[int, ...], str]] = {}
    keys: dict[str, tuple[str, slice | None]] = {}  # store key -> (feature, its slice of a packed vector)
    for feature, spec in meta.features.items():
        if feature in LEROBOT_DEFAULT_FEATURES:
            continue
        if spec["dtype"] in ("string", "language"):
            logging.getLogger(__name__).warning("skipping text feature %s", feature)
            continue
        shape = tuple(spec["shape"])
        if spec["dtype"] in ("video", "image"):
            parts = [(store_key_name(feature), _hwc(shape, spec.get("names")), "uint8", None)]
        elif feature in VECTOR_FEATURES and len(shape) == 1:
            parts, start = [], 0
            for key, size in split_vector(feature, spec.get("names"), shape[0]):
                parts.append((key, (size,), spec["dtype"], slice(start, start + size)))
                start += size
        else:
            parts = [(store_key_name(feature), shape, spec["dtype"], None)]
        for key, key_shape, dtype, part in parts:
            if key in schema:
                raise ValueError(f"features {keys[key][0]!r} and {feature!r} both map to store key {key!r}")
            schema[key], keys[key] = (key_shape, dtype), (feature, part)

    sidecar_path = lerobot_dir / SIDECAR
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else None
    if sidecar is not None and len(sidecar["episodes"]) != meta.total_episodes:
        raise ValueError(
            f"{sidecar_path} describes {len(sidecar['episodes'])} episodes but the dataset has "
            f"{meta.total_episodes}; remove it or re-export"
        )
    attrs: dict[str, Any] = {"fps": meta.fps, "robot_type": meta.robot_type, "lerobot_repo_id": repo_id}
    if sidecar is not None:
        attrs = sidecar["attrs"]
        if set(sidecar["keys"]) != set(schema):
            raise ValueError(f"{sidecar_path} names the store keys {sorted(sidecar['keys'])} but the dataset's "
                             f"features give {sorted(schema)}; remove it or re-export")
        schema = {key: schema[key] for key in sidecar["keys"]}  # the store's key order
    store = TrajectoryStore.create(store_path, schema, attrs, zarr_format=zarr_format)
    try:
        _import_episodes(dataset, decode_video_frames, store, lerobot_dir, keys, schema, sidecar, repo_id, progress)
    except BaseException:  # a failed import leaves no half-filled store behind
        shutil.rmtree(store.path, ignore_errors=True)
        raise
    return store


def _import_episodes(dataset, decode_video_frames, store: TrajectoryStore, lerobot_dir: Path, keys: dict,
                     schema: dict, sidecar: dict | None, repo_id: str, progress: bool) -> None:
    meta = dataset.meta
    frames = dataset.hf_dataset.with_format("numpy")
    for ep in tqdm(range(meta.total_episodes), desc="import episodes", disable=not progress):
        episode = meta.episodes[ep]
        rows = frames[episode["dataset_from_index"] : episode["dataset_to_index"]]
        data = {}
        for key, (feature, part) in keys.items():
            spec = meta.features[feature]
            if spec["dtype"] == "video":
                video_path = lerobot_dir / meta.get_video_file_path(ep, feature)
                start = episode[f"videos/{feature}/from_timestamp"]
                timestamps = [start + float(ts) for ts in rows["timestamp"]]
                video = decode_video_frames(
                    video_path, timestamps, dataset.tolerance_s, VIDEO_BACKEND, return_uint8=True
                )  # (T, C, H, W)
                data[key] = video.permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
            else:
                # The numpy format decodes PNG frames to (T, H, W, C) uint8 and stacks value columns.
                column = np.asarray(rows[feature])
                column = column.reshape(len(column), -1)[:, part] if part is not None else column
                data[key] = np.asarray(column, dtype=schema[key][1]).reshape(-1, *schema[key][0])
        if sidecar is not None:
            episode_meta = sidecar["episodes"][ep]
        else:
            task = episode["tasks"][0] if len(episode["tasks"]) else ""
            episode_meta = {"task": str(task), "seed": None, "success": None, "source": f"lerobot:{repo_id}"}
        store.add_episode(data, episode_meta)


def _hwc(shape: tuple[int, ...], names: list[str] | None) -> tuple[int, int, int]:
    """LeRobot records camera shapes as (H, W, C) with names, or (C, H, W) in older conversions."""
    if names is not None and list(names)[:1] == ["channels"] or (shape[0] == 3 and shape[-1] != 3):
        shape = (shape[1], shape[2], shape[0])
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"only RGB cameras can be imported, got a feature of shape {shape}")
    return shape


def compare_stores(a: TrajectoryStore, b: TrajectoryStore) -> dict[str, dict[str, float]]:
    """How far store ``b`` is from store ``a``, key by key, over all episodes.

    Returns ``{key: {"max_abs_diff": ...}}`` for low-dimensional keys and
    ``{key: {"psnr_db": ..., "max_abs_diff": ...}}`` for images. Raises ValueError when the
    stores differ in keys, episode count or episode lengths.
    """
    if a.keys != b.keys or a.n_episodes != b.n_episodes or not np.array_equal(a.episode_ends, b.episode_ends):
        raise ValueError(
            f"stores differ in layout: keys {a.keys} vs {b.keys}, "
            f"episode_ends {a.episode_ends.tolist()} vs {b.episode_ends.tolist()}"
        )
    report = {}
    for key in a.keys:
        x, y = a.array(key)[: a.n_steps], b.array(key)[: b.n_steps]
        entry = {"max_abs_diff": float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))}
        if key in a.image_keys:
            entry["psnr_db"] = psnr_uint8(x, y)
        report[key] = entry
    return report
