"""Config values against their declared types: a hydra override such as `train.steps=abc` or
`+train.foo=1` is refused with the key, what it expects and what it found, before it reaches a
comparison (`'<' not supported ...`) or a constructor (`unexpected keyword argument`).

    check_types(self)                              # first thing in a config dataclass's __post_init__
    build(TrainConfig, node, "train")              # a dataclass or function from a config node's keys
    check_keys(train_tokenizer, node, "tokenizer_train", 3)   # the same check, before the call

Plain Python (no torch, no numpy), so the deployment loop's configs can use it. Why not OmegaConf's structured
configs, which check types on merge: the dataclasses checked here belong to model, policy and deployment code,
which never imports hydra or omegaconf (the style guide), and are also built directly from Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Union


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if (origin or hint) in (list, tuple) and args:
        return f"a list ({_describe(args[0])} each)"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", tuple: "a list", dict: "a mapping"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` has the declared type `hint`; a hint it cannot judge (a class, Any) matches anything."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, typing.Sequence):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if (origin or hint) is dict:
        return isinstance(value, Mapping) and (not args or all(matches(v, args[1]) for v in value.values()))
    return True


def _hints(target: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that does not resolve here: judge nothing
        return {}


def check_value(where: str, value: Any, hint: Any) -> None:
    if not matches(value, hint):
        raise ValueError(f"{where}: expected {_describe(hint)}, found {value!r}")


def check_types(config: Any) -> None:
    """Raise a ValueError naming `Class.field`, the declared type and the value of the first field of the
    dataclass instance `config` whose value has another type."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        if f.name in hints:
            check_value(f"{type(config).__name__}.{f.name}", getattr(config, f.name), hints[f.name])


def check_keys(target: Callable, node: Mapping[str, Any], where: str, n_args: int = 0, *fixed: str) -> None:
    """Refuse, naming `where`, a key of `node` that `target` does not take (its first `n_args` parameters and
    those in `fixed` are passed otherwise) and, for a function, a value of another type than it declares (a
    dataclass checks its own in __post_init__): "train: expected keys among [...], found unknown key 'foo'"."""
    params = inspect.signature(target).parameters
    names = [n for n, p in list(params.items())[n_args:]
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in fixed]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(node) - set(names))
        if unknown:
            raise ValueError(f"{where}: expected keys among {sorted(names)}, found unknown key {unknown[0]!r}")
    if not dataclasses.is_dataclass(target):
        hints = _hints(target)
        for key, value in node.items():
            if key in hints:
                check_value(f"{where}.{key}", value, hints[key])


def build[T](target: Callable[..., T], node: Mapping[str, Any], where: str, *args: Any, **fixed: Any) -> T:
    """`target(*args, **node, **fixed)` once `check_keys` passes."""
    check_keys(target, node, where, len(args), *fixed)
    return target(*args, **node, **fixed)
