"""Running a command (toto_robot/commands/<module>.py) as a user does: a fresh interpreter, hydra
overrides on its command line."""

import subprocess
import sys


def run_command(module: str, *overrides: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    argv = list(overrides)
    code = f"import sys; from toto_robot.commands.{module} import main; sys.argv[1:] = {argv!r}; main()"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
