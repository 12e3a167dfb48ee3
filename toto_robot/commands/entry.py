"""The one wiring of a hydra command: config loading, and bad input as one line on stderr.

    main = entry_point("collect", "collect", run)          # toto-collect; pyproject points at module:main

`run(cfg)` does the work. A ValueError, FileNotFoundError or FileExistsError from it, or an
InstantiationException from a config node that hydra builds (unwrapped to its cause: the node's
validation message), prints `toto-<name>: error: <message>` and exits with status 1, no traceback;
Ctrl-C prints `toto-<name>: interrupted` and exits with status 130. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from toto_robot.config import CONFIG_DIR

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, FileExistsError)


def entry_point(name: str, config_name: str, run: Callable[[DictConfig], Any],
                errors: tuple[type[Exception], ...] = ()) -> Callable[[], None]:
    """`main()` for the command `toto-<name>`: compose configs/<config_name>.yaml with the command line's
    overrides and call `run(cfg)`. `errors` adds exception types that also mean bad input for this
    command (toto-deploy: KeyError, a mapping that names a key the robot does not have)."""
    user_errors = USER_ERRORS + tuple(errors)

    def fail(message: str, status: int) -> None:
        print(f"toto-{name}: {message}", file=sys.stderr)
        sys.exit(status)

    @functools.wraps(run)  # hydra names the job (and finds the calling module) from the wrapped `run`
    def task(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except InstantiationException as exc:  # a bad config value: its message, not hydra's wrapper
            fail(f"error: {exc.__cause__ or exc}", 1)
        except user_errors as exc:
            fail(f"error: {exc}", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    hydra_main = hydra.main(version_base=None, config_path=CONFIG_DIR, config_name=config_name)(task)

    def main() -> None:
        hydra_main()

    main.__doc__ = f"toto-{name}: configs/{config_name}.yaml plus the command line's hydra overrides."
    return main
