"""Turning hydra config nodes (plain dicts here) into typed configs. Derived values are computed here,
in Python, never in the YAML."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toto_robot.model import ModelConfig, model_preset
from toto_robot.tokenizer import TokenizerConfig, tokenizer_preset


def _config_dir() -> str:
    """The hydra config tree of every command line: the repository's top-level `configs/`, installed as the
    data-only package `toto_robot_configs` (setup.py), editable installs included."""
    spec = importlib.util.find_spec("toto_robot_configs")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("toto_robot_configs (the project's configs/) is not installed: "
                                  "install the project (make setup, or pip install .)")
    return str(Path(next(iter(spec.submodule_search_locations))).resolve())


CONFIG_DIR = _config_dir()


def _split_preset(node: dict, what: str) -> tuple[str, dict]:
    node = dict(node)
    if "preset" not in node:
        raise ValueError(f"{what} config: expected a 'preset' key, got keys {sorted(node)}")
    return node.pop("preset"), node


def tokenizer_config(node: dict) -> TokenizerConfig:
    preset, overrides = _split_preset(node, "tokenizer")
    return tokenizer_preset(preset, **overrides)


def model_config(node: dict, tokenizer: TokenizerConfig, max_frames: int) -> ModelConfig:
    """The transformer's vocabulary, tokens per frame and context follow from the tokenizer and clip length."""
    preset, overrides = _split_preset(node, "model")
    tokens = tokenizer.tokens_per_frame
    return model_preset(preset, codebook_size=tokenizer.vocab_size, tokens_per_frame=tokens,
                        max_seq_len=1 + max_frames * tokens + 1, **overrides)
