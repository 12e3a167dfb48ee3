"""Result records: the small JSON files under `results/` that every number in the README comes from.

A record holds the figures, the exact command that produced them, the seeds, the torch threads, the load
average while it ran and the git commit, so anyone can regenerate it with that command.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from toto_robot.atomic import atomic_write_text


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit of the working tree (with '-dirty' when it has uncommitted changes), or None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def run_context() -> dict[str, Any]:
    """How and where a result was measured."""
    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": git_commit(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_record(path: str | Path, record: dict[str, Any], context: dict[str, Any] | None = None) -> Path:
    """Write `record` plus the run context as indented JSON, atomically (a kill never leaves half a file).
    Pass the `run_context()` taken when the run started, so the commit is the code that ran; the load average
    of the run's end is kept beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    context = context or run_context()
    context = {**context, "load_average_1min_at_end": os.getloadavg()[0]}
    clash = sorted(k for k in set(record) & set(context) if record[k] != context[k])
    if clash:  # the context would silently replace what the record stores under these keys
        raise ValueError(f"write_record {path}: expected record keys apart from the run context's (or the same "
                         f"values), found {clash} with other values")
    return atomic_write_text(path, json.dumps({**record, **context}, indent=2, default=str) + "\n")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (better than the normal approximation near 0 and 1, and at
    the 50 episodes robomimic and diffusion_policy report)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))
