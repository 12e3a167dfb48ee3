"""The intra-op thread policy: how many threads torch (and ONNX Runtime, on the fast path) may use.

    n = configure_threads(None)     # TOTO_THREADS, else OMP_NUM_THREADS, else half the usable cores (>= 1)
    n = configure_threads(2)        # an explicit setting wins

Every command calls it once (toto_robot/commands/entry.py, from the config key `threads` or TOTO_THREADS);
the benchmarks and a user's own process call it themselves. It returns the count it set so that every
figure can be reported with it (`toto_robot.results.run_context` records it too).

Why the default is half the cores and not torch's (all of them): torch's OpenMP threads spin while they
wait for each other, so when any core is taken by another process, every parallel op waits for the
thread that lost its core. Measured on 2 cores with a busy process (results/bench/): the tiny streaming
encoder step took 23 ms with 1 thread against 421 ms with 2, the small BCPolicy step 439 ms against
1586 ms on the fast path (the issue's first figure: 5.3 against 89.8 ms). Half the cores keeps that loss
bounded and leaves a core to the control loop, the cameras and whatever else runs; on an idle machine
more threads can be faster (not measured here: these 2 cores were never idle), so set it explicitly there.
A count above the usable cores, or one that with the current load average oversubscribes them, is set as
asked but logged as a warning: never silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time

import torch

logger = logging.getLogger(__name__)

ENV_VAR = "TOTO_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """Half the usable cores, at least one (module docstring: chosen by measurement)."""
    return max(1, (usable_cores() if cores is None else cores) // 2)


def _parse(value: str, source: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{source}: expected a positive integer of threads, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{source}: expected a positive integer of threads, got {n}")
    return n


def resolve_threads(n: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from): an explicit n, TOTO_THREADS, OMP_NUM_THREADS or the default."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads: expected a positive integer or None, got {n!r}")
        return n, "explicit"
    for var in (ENV_VAR, "OMP_NUM_THREADS"):
        if os.environ.get(var):
            return _parse(os.environ[var], var), var
    return default_threads(), f"default (half of {usable_cores()} cores)"


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads from `n`, TOTO_THREADS, OMP_NUM_THREADS or the default; returns the count.
    Warns (one line) when the count oversubscribes the usable cores, given the current load average."""
    threads, source = resolve_threads(n)
    torch.set_num_threads(threads)
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if threads > cores:
        logger.warning("threads: %d intra-op threads (%s) on %d usable cores oversubscribes them", threads, source,
                       cores)
    elif threads > 1 and load + threads > cores + 0.5:
        logger.warning("threads: %d intra-op threads (%s) on %d cores with load average %.1f: busy cores slow "
                       "every parallel op (set threads=1 or %s=1)", threads, source, cores, load, ENV_VAR)
    return threads


@contextlib.contextmanager
def competing_process():
    """A busy process (one core spinning in Python) for the duration of the block: the condition the thread policy
    is measured under (bench/bench_deploy.py, bench/bench_streaming.py). Started and stopped here, never left
    running."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it take its core
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
