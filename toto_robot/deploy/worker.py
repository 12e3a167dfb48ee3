"""Background inference: a thread computes the next action chunk from the newest observation while the loop
keeps executing the current one. A `Chunk` records the tick its observation came from and when inference ran;
any exception in the policy is carried in the chunk, and the loop then stops the robot."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from toto_robot.policy_api import ObservingPolicy


@dataclass
class Chunk:
    tick: int  # the tick whose observation the chunk was computed from: action i is for tick + i
    actions: np.ndarray | None  # (H, A) float32; None when the policy raised
    t_start: float  # perf_counter when inference started / ended
    t_end: float
    error: BaseException | None = None


class InferenceWorker:
    """A thread that runs `policy.predict_action_chunk` on the newest submitted observation.

    `submit` never blocks. A prediction still waiting when a newer one arrives is not made (counted in
    `skipped`). A policy with temporal state (`ObservingPolicy`) still gets that frame, and every frame
    submitted with `predict=False`, through `observe`, in tick order, so its stream sees every frame. When
    inference falls behind, at most `observe_backlog` such frames wait before the newest prediction; older
    ones are dropped unseen (counted in `unseen`), so a slow policy loses context rather than freshness; 0
    turns `observe` off. `poll` returns the newest finished chunk, or None. torch releases the GIL inside its
    kernels, so inference overlaps the control loop's robot I/O and sleeping."""

    def __init__(self, policy, observe_backlog: int = 4):
        self.policy = policy
        self.observes = observe_backlog > 0 and isinstance(policy, ObservingPolicy)
        self.observe_backlog = observe_backlog
        self.skipped = 0
        self.unseen = 0
        self._cond = threading.Condition()
        self._pending: deque[tuple[int, dict[str, np.ndarray], bool]] = deque()
        self._result: Chunk | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="toto-inference", daemon=True)
        self._thread.start()

    def submit(self, tick: int, obs: dict[str, np.ndarray], predict: bool = True) -> None:
        with self._cond:
            if not self.observes:
                if not predict:
                    return  # a policy without temporal state has no use for it
                self.skipped += len(self._pending)
                self._pending.clear()
            elif len(self._pending) > self.observe_backlog:  # the backlog, plus the newest prediction
                self.skipped += self._pending.popleft()[2]
                self.unseen += 1
            self._pending.append((tick, obs, predict))
            self._cond.notify()

    def poll(self) -> Chunk | None:
        with self._cond:
            result, self._result = self._result, None
        return result

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; it finishes at most the policy call in progress. Raises if that call outlives
        `timeout`: the policy must not be reused (next episode) while the thread still runs it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"inference worker: the policy call still runs {timeout} s after the episode "
                               "ended")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = list(self._pending)
                self._pending.clear()
                newest = max((i for i, (_, _, predict) in enumerate(batch) if predict), default=-1)
                self.skipped += sum(predict for _, _, predict in batch[:newest])
            for i, (tick, obs, _) in enumerate(batch):
                if self._closed:
                    return
                if i == newest:
                    chunk = predict_chunk(self.policy, tick, obs)
                else:
                    try:
                        self.policy.observe(obs)
                        continue
                    except Exception as exc:  # noqa: BLE001  (reported to the loop, which stops the robot)
                        chunk = Chunk(tick, None, time.perf_counter(), time.perf_counter(), exc)
                with self._cond:
                    if self._result is None or self._result.error is None:  # an error is never overwritten
                        self._result = chunk
                if chunk.error is not None:
                    return


def predict_chunk(policy, tick: int, obs: dict[str, np.ndarray]) -> Chunk:
    """One chunk from `obs`; any exception in the policy is returned in the chunk (the loop then stops)."""
    t_start = time.perf_counter()
    try:
        actions, error = np.asarray(policy.predict_action_chunk(obs), dtype=np.float32), None
    except Exception as exc:  # noqa: BLE001  (any failure is reported to the loop, which stops the robot)
        actions, error = None, exc
    return Chunk(tick, actions, t_start, time.perf_counter(), error)
