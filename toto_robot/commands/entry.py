"""The one wiring of a hydra command: config loading, and the one error path every command shares.

    main = entry_point("collect", "collect", run)          # toto-collect; pyproject points at module:main

`run(cfg)` does the work. How a command ends (its exit status, the README's table):

- 0, done.
- 2, bad input or configuration: an override hydra cannot parse or compose (an unknown key, a missing config
  option), or an error `run` raises for what it was given: a ValueError, FileNotFoundError, FileExistsError or
  NotADirectoryError (or a TimeoutError: a store locked by another process), or an InstantiationException from a config node that hydra builds
  (unwrapped to its cause: the node's validation message). One line `toto-<name>: error: <message>` on stderr.
- 3, stopped: `run` raised `Stopped` (toto-deploy: a safety stop or a lost robot). One line
  `toto-<name>: stopped: <message>`.
- 130, Ctrl-C: `toto-<name>: interrupted`.
- 1, anything unexpected: a bug, with its traceback.

A message is one line; the traceback of a bad input or a stop is printed above it only with
HYDRA_FULL_ERROR=1 (hydra's own switch for full stack traces), and the exit status stays the same.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hydra
from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from toto_robot.commands.status import (  # noqa: F401  (EXIT_* re-exported for commands and tests)
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    USER_ERRORS,
)
from toto_robot.config import CONFIG_DIR
from toto_robot.threads import configure_threads

FULL_ERROR = "HYDRA_FULL_ERROR"


class Stopped(Exception):
    """The run stopped before it was done, as designed: a safety stop, a robot that went away (exit status 3)."""




def one_line(message: object) -> str:
    """A message on one line: its lines joined with '; ', hydra's pointers to its documentation dropped."""
    lines = [line.strip() for line in str(message).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith("See https://hydra.cc"))


def _composition_message(exc: HydraException, config_name: str) -> str:
    """What hydra found wrong with the overrides, on one line, naming the config file."""
    where = f"configs/{config_name}.yaml"
    text = str(exc).split("\nConfig search path:")[0]
    cause = exc.__cause__
    if isinstance(exc, OverrideParseException):
        lines = [line for line in text.splitlines() if not line.startswith("Error parsing override")]
        return f"override {exc.override!r}: expected key=value (hydra's override syntax), found {one_line(chr(10).join(lines))}"
    if isinstance(exc, MissingConfigException) and exc.options:
        return f"{where}: {text.splitlines()[0]}; expected one of: {', '.join(exc.options)}"
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        add = next((line.split(" use ")[-1] for line in text.splitlines() if " use +" in line), None)
        return (f"override {add[1:] if add else cause.full_key!r}: expected a key of {where}, found no key "
                f"{cause.full_key!r}" + (f" (to add a new key: {add})" if add else ""))
    if isinstance(cause, OmegaConfBaseException):  # its first line, without the full_key / object_type lines
        text += f"\n{str(cause).splitlines()[0]}"
    return f"{where}: {one_line(text)}"


def _instantiation_message(exc: InstantiationException) -> str:
    """The node's own validation message, or for a `_target_` hydra cannot import, which node names what."""
    located = re.match(r"Error locating target '([^']+)'", str(exc))
    if located:
        node = re.search(r"full_key: (\S+)", str(exc))
        cause = str(exc.__cause__).splitlines()[1:2] if exc.__cause__ else []  # "ModuleNotFoundError(...)"
        return (f"{node.group(1) if node else 'config'}._target_: expected an importable callable, found "
                f"{located.group(1)!r}" + (f" ({cause[0]})" if cause else ""))
    return str(exc.__cause__ or exc)


@contextmanager
def _hydra_raises() -> Iterator[bool]:
    """Hydra prints its own report (several lines) of a bad override unless HYDRA_FULL_ERROR is set; set it
    while hydra composes the config so the exception reaches `main`. Yields whether the user had set it."""
    user_set = os.environ.get(FULL_ERROR, "") not in ("", "0")
    os.environ[FULL_ERROR] = "1"
    try:
        yield user_set
    finally:
        if not user_set:
            os.environ.pop(FULL_ERROR, None)


def entry_point(name: str, config_name: str, run: Callable[[DictConfig], Any],
                errors: tuple[type[Exception], ...] = ()) -> Callable[[], None]:
    """`main()` for the command `toto-<name>`: compose configs/<config_name>.yaml with the command line's
    overrides and call `run(cfg)`. `errors` adds exception types that also mean bad input for this
    command (toto-deploy: KeyError, a mapping that names a key the robot does not have)."""
    user_errors = USER_ERRORS + tuple(errors)
    debug = False  # HYDRA_FULL_ERROR as the user set it

    def fail(message: str, status: int) -> None:
        if debug and status != EXIT_INTERRUPTED:
            traceback.print_exc()
        print(f"toto-{name}: {one_line(message)}", file=sys.stderr)
        sys.exit(status)

    @functools.wraps(run)  # hydra names the job (and finds the calling module) from the wrapped `run`
    def task(cfg: DictConfig) -> None:
        if not debug:  # the config is composed: a bug in `run` gets hydra's usual report again
            os.environ.pop(FULL_ERROR, None)
        try:
            configure_threads(cfg.threads if "threads" in cfg else None)  # toto_robot/threads.py
            run(cfg)
        except InstantiationException as exc:  # a bad config value: its message, not hydra's wrapper
            fail(f"error: {_instantiation_message(exc)}", EXIT_BAD_INPUT)
        except user_errors as exc:
            fail(f"error: {exc}", EXIT_BAD_INPUT)
        except Stopped as exc:
            fail(f"stopped: {exc}", EXIT_STOPPED)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)

    hydra_main = hydra.main(version_base=None, config_path=CONFIG_DIR, config_name=config_name)(task)

    def main() -> None:
        nonlocal debug
        with _hydra_raises() as debug:
            try:
                hydra_main()
            except HydraException as exc:  # the overrides: unparsable, an unknown key, a missing option
                fail(f"error: {_composition_message(exc, config_name)}", EXIT_BAD_INPUT)

    main.__doc__ = f"toto-{name}: configs/{config_name}.yaml plus the command line's hydra overrides."
    return main
