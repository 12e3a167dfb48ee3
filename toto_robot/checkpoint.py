"""Checkpoint directories: `config.json` (the resolved config) plus one `<name>.safetensors` per module.

Loading never unpickles code: configs are JSON, tensors are safetensors. Writes are atomic: the
directory is assembled under a temporary name and renamed into place, so an interrupted save leaves
the previous checkpoint (or nothing) but never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, config: dict, state_dicts: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write `config` and each state dict (name -> tensors) to the directory `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, sd in state_dicts.items():
            # safetensors refuses shared or non-contiguous storage: store independent copies.
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
            save_file(tensors, tmp / f"{name}.safetensors")
        full = {**config, "files": sorted(f"{n}.safetensors" for n in state_dicts)}
        (tmp / CONFIG_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"checkpoint: expected a directory with {CONFIG_FILE}, found none at {path}")
    return json.loads(cfg_file.read_text())


def load_state_dict(path: str | os.PathLike, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        have = sorted(p.name for p in Path(path).glob("*.safetensors"))
        raise FileNotFoundError(f"checkpoint: expected {f.name} in {path}, found {have}")
    return load_file(f, device=str(device))
