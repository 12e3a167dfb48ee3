"""Checkpoints: the one module that knows their kinds, their versions and how each is saved and loaded.

A checkpoint is a directory: `config.json` (the resolved config, with its `kind` and `version`) plus one
`<name>.safetensors` per module. Loading never unpickles code: configs are JSON, tensors are safetensors.
Writes are atomic: the directory is assembled under a temporary name and renamed into place, so an
interrupted save leaves the previous checkpoint (or nothing) but never a half-written one.

The kinds (KINDS):
- "tokenizer": the frozen tokenizer (tokenizer.safetensors). `save_tokenizer` / `load_tokenizer`.
- "toto": tokenizer + transformer (tokenizer.safetensors, model.safetensors), enough to rebuild the encoder.
  `save_toto` / `load_toto`. The pretraining checkpoint is a Toto checkpoint that also carries the train
  state (a `train` section in config.json, optimizer.safetensors, rng.safetensors), so every reader of an
  encoder reads it as it is: `save_train_state` / `load_train_state` with a `TrainState`.
- "toto-bc-policy": a behavior-cloning policy with every weight (policy.safetensors), written and read by
  `policies.bc.BCPolicy.save/load` through `save_checkpoint` / `read_checkpoint`.

Versions: config.json records the CHECKPOINT_VERSION that wrote it, and a reader refuses any other one.
Version 1 is the layout written before the field existed, so a config.json without `version` reads as
version 1. A change of layout bumps CHECKPOINT_VERSION.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from toto_robot.model import ModelConfig, Transformer
from toto_robot.tokenizer import Tokenizer, TokenizerConfig

CONFIG_FILE = "config.json"
CHECKPOINT_VERSION = 1
UNVERSIONED = 1  # the version of a config.json written before the field existed (same layout as version 1)

TOKENIZER = "tokenizer"
TOTO = "toto"
BC_POLICY = "toto-bc-policy"
KINDS = (TOKENIZER, TOTO, BC_POLICY)
_RESERVED = ("kind", "version", "files")  # written by save_checkpoint itself


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, kind: str, config: dict,
                    state_dicts: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write a checkpoint of `kind`: `config` (plus kind, version and the file list) and each state dict
    (name -> tensors) to the directory `path`, atomically."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind: expected one of {KINDS}, got {kind!r}")
    reserved = sorted(set(config) & set(_RESERVED))
    if reserved:
        raise ValueError(f"checkpoint config: keys {reserved} are written by save_checkpoint, remove them")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        for name, sd in state_dicts.items():
            # safetensors refuses shared or non-contiguous storage: store independent copies.
            tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
            save_file(tensors, tmp / f"{name}.safetensors")
        full = {**config, "kind": kind, "version": CHECKPOINT_VERSION,
                "files": sorted(f"{n}.safetensors" for n in state_dicts)}
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


def clean_leftovers(path: str | os.PathLike) -> None:
    """Remove what saves of the checkpoint `path` that were killed left beside it: `.<name>.tmp-*` (a
    directory being written) and `.<name>.old-*` (the previous checkpoint during the swap; when the kill
    came between the two renames, it is the latest complete checkpoint and goes back into place)."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def read_config(path: str | os.PathLike) -> dict:
    """config.json of a checkpoint of any kind, once its version is checked."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f"checkpoint {path}: expected {cfg_file}, found no such file")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path}: expected JSON in {cfg_file}, found a file that does not parse "
                         f"({exc}); a cut copy?") from exc
    if not isinstance(config, dict):
        raise ValueError(  # noqa: TRY004  (bad input, exit status 2, not a bug)
            f"checkpoint {path}: expected a JSON object in {cfg_file}, found {type(config).__name__}")
    version = config.get("version", UNVERSIONED)  # no field: written before it existed
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path} was saved by checkpoint version {version}; "
                         f"this code reads version {CHECKPOINT_VERSION}")
    return config


def read_checkpoint(path: str | os.PathLike, kind: str | tuple[str, ...]) -> dict:
    """config.json of a checkpoint of `kind` (or of one of several kinds), once its version is checked."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not kinds or not set(kinds) <= set(KINDS):
        raise ValueError(f"checkpoint kind: expected one or more of {KINDS}, got {kind!r}")
    config = read_config(path)
    if config.get("kind") not in kinds:  # .get: a directory some other tool wrote has no kind
        expected = " or ".join(repr(k) for k in kinds)
        raise ValueError(f"checkpoint {path}: expected kind {expected}, found {config.get('kind')!r}")
    return config


def load_state_dict(path: str | os.PathLike, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        have = sorted(p.name for p in Path(path).glob("*.safetensors"))
        raise FileNotFoundError(f"checkpoint {path}: expected {f.name}, found {have or 'no .safetensors files'}")
    try:
        return load_file(f, device=str(device))
    except SafetensorError as exc:  # a cut or overwritten file
        raise ValueError(f"checkpoint {path}: expected a complete safetensors file at {f}, found one that does "
                         f"not read ({exc}); a cut copy?") from exc


# ---------------------------------------------------------------- tokenizer and Toto checkpoints
def save_tokenizer(path: str | os.PathLike, tokenizer: Tokenizer, extra: dict | None = None) -> Path:
    """A tokenizer checkpoint: config.json (its TokenizerConfig, plus `extra`) + tokenizer.safetensors."""
    return save_checkpoint(path, TOKENIZER, {"tokenizer": asdict(tokenizer.cfg), **(extra or {})},
                           {"tokenizer": tokenizer.state_dict()})


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tokenizer:
    """The tokenizer of a tokenizer checkpoint or of a Toto checkpoint (both hold tokenizer.safetensors),
    in eval mode."""
    config = read_checkpoint(path, (TOKENIZER, TOTO))
    tok = Tokenizer(TokenizerConfig(**config["tokenizer"]))
    tok.load_state_dict(load_state_dict(path, "tokenizer"))
    return tok.to(device).eval()


def _toto_config(tokenizer: Tokenizer, model_cfg: ModelConfig, extra: dict | None) -> dict:
    return {"tokenizer": asdict(tokenizer.cfg), "model": model_cfg.to_dict(), **(extra or {})}


def save_toto(path: str | os.PathLike, tokenizer: Tokenizer, model: Transformer, extra: dict | None = None) -> Path:
    """A Toto checkpoint: config.json (both configs, plus `extra`) + tokenizer.safetensors + model.safetensors."""
    return save_checkpoint(path, TOTO, _toto_config(tokenizer, model.cfg, extra),
                           {"tokenizer": tokenizer.state_dict(), "model": model.state_dict()})


def load_toto(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Tokenizer, Transformer, dict]:
    """Rebuild tokenizer and transformer from a checkpoint directory alone; also returns its config."""
    config = read_checkpoint(path, TOTO)
    tokenizer = Tokenizer(TokenizerConfig(**config["tokenizer"]))
    tokenizer.load_state_dict(load_state_dict(path, "tokenizer"))
    model = Transformer(ModelConfig(**config["model"]))
    model.load_state_dict(load_state_dict(path, "model"))
    return tokenizer.to(device), model.to(device), config


# ---------------------------------------------------------------- the pretraining train state
@dataclass
class TrainState:
    """What a pretraining run needs to continue exactly where it stopped. Batches are a function of
    (seed, step, micro-batch, rank), so the data position is the step, the seed and the number of processes."""

    step: int  # optimizer steps taken
    model: dict[str, torch.Tensor]  # the full (unsharded) model state dict
    optimizer: dict  # the full optimizer state dict keyed by parameter name: {"state": ..., "param_groups": ...}
    scheduler: dict  # the LR scheduler's state dict without its lambdas
    rng: list[list[torch.Tensor]]  # per rank: the CPU generator's state, then the CUDA one's when there is one
    seed: int
    world_size: int  # processes that trained; a resume with another count draws other batches
    run: dict = field(default_factory=dict)  # what the run was (config, shards, ...): recorded, not restored


_TRAIN = "train"  # the config.json section of the train state
_TRAIN_KEYS = ("step", "data_position", "scheduler", "optimizer_param_groups")
_SEP = "::"


# The optimizer state is flattened by hand: torch's own flattening does not load back with
# full_state_dict=True (KeyError on 'param_groups.0.params.0' in torch 2.11).
def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """{"state": {name: {key: tensor}}, "param_groups": [...]} -> ({"name::key": tensor}, param_groups)."""
    tensors = {f"{name}{_SEP}{k}": v for name, st in osd["state"].items() for k, v in st.items()}
    return tensors, osd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[str, dict] = {}
    for key, v in tensors.items():
        name, k = key.rsplit(_SEP, 1)
        state.setdefault(name, {})[k] = v
    # JSON turned tuples (AdamW's betas) into lists.
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in param_groups]
    return {"state": state, "param_groups": groups}


def save_train_state(path: str | os.PathLike, state: TrainState, tokenizer: Tokenizer, model_cfg: ModelConfig,
                     extra: dict | None = None) -> Path:
    """A Toto checkpoint (`load_toto` reads it) that also carries `state`: config.json's `train` section,
    optimizer.safetensors and rng.safetensors; `extra` goes to the top level of config.json (as in `save_toto`)."""
    clash = sorted(set(state.run) & set(_TRAIN_KEYS))
    if clash:
        raise ValueError(f"TrainState.run: keys {clash} are the train state's own, rename them")
    if _TRAIN in (extra or {}):
        raise ValueError(f"save_train_state extra: the key {_TRAIN!r} is the train state's section, rename it")
    optim_tensors, param_groups = _flatten_optimizer(state.optimizer)
    train = {**state.run, "step": state.step, "scheduler": state.scheduler, "optimizer_param_groups": param_groups,
             "data_position": {"step": state.step, "seed": state.seed, "world_size": state.world_size}}
    rng = {f"rank{r}.{i}": t for r, states in enumerate(state.rng) for i, t in enumerate(states)}
    config = _toto_config(tokenizer, model_cfg, {**(extra or {}), _TRAIN: json.loads(json.dumps(train))})
    return save_checkpoint(path, TOTO, config, {"tokenizer": tokenizer.state_dict(), "model": state.model,
                                                "optimizer": optim_tensors, "rng": rng})


def load_train_state(path: str | os.PathLike) -> TrainState:
    """The train state of a checkpoint `save_train_state` wrote, its tensors on the CPU."""
    config = read_checkpoint(path, TOTO)
    if _TRAIN not in config:
        raise ValueError(f"checkpoint {path}: expected a train state (the `{_TRAIN}` section the trainer writes), "
                         "found a Toto checkpoint without one")
    train = config[_TRAIN]
    by_rank: dict[int, dict[int, torch.Tensor]] = {}
    for key, t in load_state_dict(path, "rng").items():  # "rank{r}.{i}"
        r, i = key.removeprefix("rank").split(".")
        by_rank.setdefault(int(r), {})[int(i)] = t
    position = train["data_position"]
    return TrainState(
        step=int(train["step"]), model=load_state_dict(path, "model"),
        optimizer=_unflatten_optimizer(load_state_dict(path, "optimizer"), train["optimizer_param_groups"]),
        scheduler=train["scheduler"], rng=[[states[i] for i in sorted(states)] for _, states in sorted(by_rank.items())],
        seed=int(position["seed"]), world_size=int(position["world_size"]),
        run={k: v for k, v in train.items() if k not in _TRAIN_KEYS})
