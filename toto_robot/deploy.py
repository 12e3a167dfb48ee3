"""The deployment loop: a policy drives a robot at a fixed rate, safely, and every episode is logged.

    result = run_episode(robot, policy, LoopConfig(rate_hz=10, n_steps=100), SafetyConfig())
    log_episode(store, result, task="lift the red cube", source="deploy:toto_sim")

`robot` is anything with the `ControlRobot` shape (envs/robot.py adapts any LeRobot `Robot` to it): it returns
observations keyed as the policy expects, each with the time it was captured, and takes action vectors.
`policy` is any `toto_robot.policy_api.Policy`; the loop calls only `reset()` and `predict_action_chunk(obs)`,
and `observe(obs)` for the frames it does not predict from when the policy has temporal state (`ObservingPolicy`).

Timing. Tick k is due at t0 + k / rate_hz; the loop sleeps until then, reads an observation, hands it to a
background inference worker, and sends the action planned for tick k. The worker computes a chunk of H actions
from the newest observation it was given while the loop keeps executing the current chunk; action i of a chunk
computed from the observation of tick k0 is meant for tick k0 + i, so when the chunk arrives at tick k the first
k - k0 actions are already in the past and are dropped (latency compensation). A new chunk either replaces the
plan (`chunk_rule="switch"`) or is cross-faded into it over `blend_steps` ticks (`"blend"`). A tick the loop
misses (an overrun) is skipped, never executed late: ticks are counted from the clock, not from iterations.

Safety (`SafetyConfig`), checked every tick, each intervention logged with its tick and time:
- actions are clipped to [action_low, action_high] and to max_delta away from the previous action;
- an observation older than `max_obs_age_s`, a camera that timed out, or a non-finite reading -> hold;
- no planned action for the tick (inference too slow) -> hold;
- holding longer than `max_hold_s` -> safe stop;
- a non-finite action chunk or an exception in the policy -> safe stop (the chunk is never executed);
- a robot or camera disconnect (ConnectionError) -> the episode ends, nothing more is sent;
- Ctrl-C (KeyboardInterrupt) -> safe stop, the episode is returned and can still be logged.
A safe stop sends one hold action. "Hold" is the action that keeps the robot where it is: zero deltas
(`hold="zero"`, keeping `hold_keep` dims such as the gripper from the last action) for velocity or delta
controllers, the last action again (`hold="last"`) for absolute position targets, or nothing (`hold="skip"`).

Episodes are logged to a `TrajectoryStore` in the layout `toto-collect` writes (observation keys + `action`),
with timing (`t_tick`, `t_observation`, `t_action`, seconds from the episode start), the policy's raw action,
the chunk index executed and an intervention bitmask per step; the episode metadata carries the status, the
list of interventions and the timing summary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from lerobot.utils.robot_utils import precise_sleep
from torch import nn

from toto_robot.encoder import StreamingEncoder
from toto_robot.policy_api import ObservingPolicy
from toto_robot.store import TrajectoryStore

logger = logging.getLogger(__name__)

CHUNK_RULES = ("switch", "blend")
HOLD_MODES = ("zero", "last", "skip")

# Episode statuses: how run_episode ended.
COMPLETED, STOPPED, DISCONNECTED, INTERRUPTED = "completed", "stopped", "disconnected", "interrupted"

# Per-step intervention bits (the `intervention` key of a logged episode).
INTERVENTION_BITS = {
    "clip_limit": 1,  # an action component was outside [action_low, action_high]
    "clip_delta": 2,  # an action component moved more than max_delta from the previous action
    "hold_stale": 4,  # the observation was older than max_obs_age_s (or the camera timed out)
    "hold_invalid": 8,  # the observation had a non-finite value
    "hold_no_action": 16,  # no planned action for this tick
}


@dataclass
class LoopConfig:
    rate_hz: float = 10.0  # control rate: one action per tick
    n_steps: int = 100  # ticks per episode
    chunk_rule: str = "switch"  # "switch": a new chunk replaces the plan; "blend": cross-fade into it
    blend_steps: int = 4  # "blend": ticks over which the new chunk's weight ramps up to 1
    infer_every: int = 1  # hand every n-th observation to the inference worker
    observe_backlog: int = 4  # frames a stateful policy may still have to `observe`; older ones go unseen
    max_obs_age_s: float = 0.2  # an observation older than this when the action is chosen -> hold
    max_hold_s: float = 1.0  # holding (for any reason) longer than this -> safe stop

    def __post_init__(self) -> None:
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"LoopConfig.rate_hz: expected a rate in (0, 1000] Hz, got {self.rate_hz}")
        for name in ("n_steps", "blend_steps", "infer_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.observe_backlog < 0:
            raise ValueError(f"LoopConfig.observe_backlog: expected an integer >= 0, got {self.observe_backlog}")
        if self.chunk_rule not in CHUNK_RULES:
            raise ValueError(f"LoopConfig.chunk_rule: expected one of {CHUNK_RULES}, got {self.chunk_rule!r}")
        for name in ("max_obs_age_s", "max_hold_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoopConfig.{name}: expected seconds > 0, got {getattr(self, name)}")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class SafetyConfig:
    action_low: float | list[float] = -1.0  # per-dimension lower limit (a scalar applies to every dimension)
    action_high: float | list[float] = 1.0
    max_delta: float | list[float] | None = 0.5  # largest change of any dimension from one tick to the next
    hold: str = "zero"  # "zero" | "last" | "skip": what holding position sends (module docstring)
    hold_keep: list[int] = field(default_factory=list)  # "zero": dims copied from the last action (gripper)

    def __post_init__(self) -> None:
        if self.hold not in HOLD_MODES:
            raise ValueError(f"SafetyConfig.hold: expected one of {HOLD_MODES}, got {self.hold!r}")
        low, high = np.asarray(self.action_low, np.float64), np.asarray(self.action_high, np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(low <= high)):
            raise ValueError(f"SafetyConfig: expected finite action_low <= action_high, got {self.action_low} "
                             f"and {self.action_high}")
        if self.max_delta is not None and not np.all(np.asarray(self.max_delta, np.float64) > 0):
            raise ValueError(f"SafetyConfig.max_delta: expected positive values or null, got {self.max_delta}")
        self.hold_keep = [int(i) for i in self.hold_keep]


@dataclass
class TimedObservation:
    data: dict[str, np.ndarray]  # keyed as the policy expects: images (H, W, 3) uint8, state float32
    t_capture: float  # time.perf_counter() when the oldest part of it was captured


class ControlRobot(Protocol):
    """What the loop needs from a robot. Errors: TimeoutError when a camera has no recent frame (the loop
    holds), ConnectionError when the robot or a camera is gone (the loop ends the episode)."""

    action_dim: int

    def get_observation(self) -> TimedObservation: ...

    def send_action(self, action: np.ndarray) -> None: ...


# -- safety --------------------------------------------------------------------------------------------------


class SafetyFilter:
    """Clips actions to limits and to a maximum change per tick; builds hold actions."""

    def __init__(self, config: SafetyConfig, action_dim: int):
        self.config, self.action_dim = config, action_dim
        self.low = self._per_dim("action_low", config.action_low)
        self.high = self._per_dim("action_high", config.action_high)
        self.max_delta = None if config.max_delta is None else self._per_dim("max_delta", config.max_delta)
        bad = [i for i in config.hold_keep if not 0 <= i < action_dim]
        if bad:
            raise ValueError(f"SafetyConfig.hold_keep: expected dims in [0, {action_dim}), got {bad}")

    def _per_dim(self, name: str, value) -> np.ndarray:
        arr = np.broadcast_to(np.asarray(value, np.float32), (self.action_dim,)) if np.ndim(value) == 0 \
            else np.asarray(value, np.float32)
        if arr.shape != (self.action_dim,):
            raise ValueError(f"SafetyConfig.{name}: expected a scalar or {self.action_dim} values (the action "
                             f"size), got {len(arr)}")
        return arr

    def __call__(self, action: np.ndarray, last: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
        """action (A,) finite -> (safe action, names of the limits that changed it)."""
        kinds = []
        out = np.clip(action, self.low, self.high)
        if not np.array_equal(out, action):
            kinds.append("clip_limit")
        if self.max_delta is not None and last is not None:
            limited = np.clip(out, last - self.max_delta, last + self.max_delta)
            if not np.array_equal(limited, out):
                kinds.append("clip_delta")
            out = limited
        return out.astype(np.float32), kinds

    def hold(self, last: np.ndarray | None) -> np.ndarray | None:
        """The action that holds position (None: send nothing)."""
        mode = self.config.hold
        if mode == "skip" or (mode == "last" and last is None):
            return None
        if mode == "last":
            return last.copy()
        out = np.zeros(self.action_dim, np.float32)
        if last is not None and self.config.hold_keep:
            out[self.config.hold_keep] = last[self.config.hold_keep]
        return out


# -- background inference ------------------------------------------------------------------------------------


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
    inference falls behind, at most `observe_backlog` such frames wait before the newest prediction; older ones
    are dropped unseen (counted in `unseen`), so a slow policy loses context rather than freshness; 0 turns
    `observe` off. `poll` returns the newest finished chunk, or None. torch releases the GIL inside its kernels, so inference overlaps the control
    loop's robot I/O and sleeping."""

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
            raise RuntimeError(f"inference worker: the policy call still runs {timeout} s after the episode ended")

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
                    chunk = _predict(self.policy, tick, obs)
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


def _predict(policy, tick: int, obs: dict[str, np.ndarray]) -> Chunk:
    """One chunk from `obs`; any exception in the policy is returned in the chunk (the loop then stops)."""
    t_start = time.perf_counter()
    try:
        actions, error = np.asarray(policy.predict_action_chunk(obs), dtype=np.float32), None
    except Exception as exc:  # noqa: BLE001  (any failure is reported to the loop, which stops the robot)
        actions, error = None, exc
    return Chunk(tick, actions, t_start, time.perf_counter(), error)


class ActionPlan:
    """Actions planned for upcoming ticks, merged from successive chunks."""

    def __init__(self, rule: str, blend_steps: int):
        self.rule, self.blend_steps = rule, blend_steps
        self.start = 0  # tick of actions[0]
        self.actions = np.zeros((0, 0), np.float32)  # (n, A)
        self.chunk_index = np.zeros(0, np.int64)  # index within its chunk of each planned action

    def merge(self, chunk: Chunk, now: int) -> int:
        """Add a chunk at tick `now`; returns how many of its actions were already due (dropped)."""
        actions = chunk.actions
        dropped = min(max(now - chunk.tick, 0), len(actions))
        new, new_index = actions[dropped:], np.arange(dropped, len(actions))
        old = self.actions[max(now - self.start, 0):] if len(self.actions) else self.actions
        if self.rule == "blend" and len(old) and len(new):
            n = min(len(old), len(new))
            w = np.minimum(np.arange(1, n + 1) / (self.blend_steps + 1), 1.0)[:, None]  # the new chunk's weight
            new = new.copy()
            new[:n] = (1 - w) * old[:n] + w * new[:n]
        self.start, self.actions, self.chunk_index = now, new.astype(np.float32), new_index
        return dropped

    def action_at(self, tick: int) -> tuple[np.ndarray, int] | None:
        i = tick - self.start
        if 0 <= i < len(self.actions):
            return self.actions[i], int(self.chunk_index[i])
        return None


# -- the loop ------------------------------------------------------------------------------------------------


@dataclass
class EpisodeResult:
    status: str  # COMPLETED | STOPPED | DISCONNECTED | INTERRUPTED
    reason: str  # what ended the episode, in words
    steps: dict[str, np.ndarray]  # per logged step, time first (see module docstring)
    interventions: list[dict[str, Any]]  # {"tick", "t", "kind", "detail"}
    timing: dict[str, float]  # summary: achieved rate, step latency percentiles, inference latency, drops

    @property
    def n_steps(self) -> int:
        return len(self.steps["action"]) if "action" in self.steps else 0


def _finite(obs: Mapping[str, np.ndarray]) -> bool:
    return all(np.all(np.isfinite(v)) for v in obs.values() if np.issubdtype(np.asarray(v).dtype, np.floating))


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _percentiles_ms(values: list[float], prefix: str) -> dict[str, float]:
    if not values:
        return {f"{prefix}_p50_ms": math.nan, f"{prefix}_p99_ms": math.nan}
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return {f"{prefix}_p50_ms": float(p50), f"{prefix}_p99_ms": float(p99)}


class _Episode:
    """State of one running episode; `run_episode` is the public entry point."""

    def __init__(self, robot: ControlRobot, policy, loop: LoopConfig, safety: SafetyConfig):
        self.robot, self.policy, self.loop = robot, policy, loop
        self.safety = SafetyFilter(safety, robot.action_dim)
        self.plan = ActionPlan(loop.chunk_rule, loop.blend_steps)
        self.rows: dict[str, list] = {}
        self.interventions: list[dict[str, Any]] = []
        self.last_action: np.ndarray | None = None
        self.hold_since: float | None = None
        self.t0 = 0.0
        self.worker: InferenceWorker | None = None
        self.dropped = 0
        self.missed_ticks = 0
        self.chunks = 0
        self.inference_s: list[float] = []
        self.step_s: list[float] = []
        self.t_sent: list[float] = []

    def event(self, tick: int, kind: str, detail: str = "") -> None:
        t = time.perf_counter() - self.t0 if self.t0 else 0.0
        self.interventions.append({"tick": tick, "t": round(t, 6), "kind": kind, "detail": detail})
        # Clipping is routine (logged at INFO); holds and stops are what an operator must see.
        level = logging.INFO if kind.startswith("clip") else logging.WARNING
        logger.log(level, "tick %d (%.3f s): %s %s", tick, t, kind, detail)

    def send(self, action: np.ndarray | None) -> None:
        if action is not None:
            self.robot.send_action(action)
            self.last_action = action

    def safe_stop(self, tick: int, kind: str, detail: str) -> None:
        self.event(tick, kind, detail)
        try:
            self.send(self.safety.hold(self.last_action))
        except (ConnectionError, TimeoutError) as exc:
            self.event(tick, "safe_stop_failed", repr(exc))

    def take_chunk(self, chunk: Chunk | None, tick: int) -> str | None:
        """Merge a finished chunk, if any, at `tick`; returns why the robot must stop, or None."""
        if chunk is None:
            return None
        if chunk.error is not None:
            return f"the policy raised {chunk.error!r}"
        actions = chunk.actions
        if actions.ndim != 2 or actions.shape[1] != self.robot.action_dim:
            return f"the policy returned a chunk of shape {actions.shape}; expected (H, {self.robot.action_dim})"
        if not np.all(np.isfinite(actions)):
            return f"the policy returned non-finite actions (chunk from tick {chunk.tick})"
        self.chunks += 1
        self.inference_s.append(chunk.t_end - chunk.t_start)
        self.dropped += self.plan.merge(chunk, tick)
        return None

    def record(self, tick: int, t_tick: float, obs: TimedObservation, raw: np.ndarray, action: np.ndarray,
               chunk_index: int, flags: int, t_action: float) -> None:
        row = {
            **obs.data,
            "action": action,
            "policy_action": raw,
            "chunk_index": np.array([chunk_index], np.int32),
            "intervention": np.array([flags], np.int32),
            "tick": np.array([tick], np.int64),
            "t_tick": np.array([t_tick - self.t0]),
            "t_observation": np.array([obs.t_capture - self.t0]),
            "t_action": np.array([t_action - self.t0]),
        }
        for key, value in row.items():
            self.rows.setdefault(key, []).append(value)

    def run(self) -> EpisodeResult:
        self.policy.reset()
        self.tick = 0
        try:
            status, reason = self.start()
            if status is None:
                status, reason = self.ticks()
        except KeyboardInterrupt:
            self.safe_stop(self.tick, "interrupted", "Ctrl-C")
            status, reason = INTERRUPTED, "interrupted by Ctrl-C"
        finally:
            if self.worker is not None:
                self.worker.close()
        return self.finish(status, reason, time.perf_counter() - self.t0 if self.t0 else 0.0)

    def start(self) -> tuple[str | None, str]:
        """The first chunk, computed here before the clock starts: nothing has moved yet, so it is not stale,
        and the first inference (allocations, kernel selection) does not eat into the control budget."""
        try:
            first = self.robot.get_observation()
        except (ConnectionError, TimeoutError) as exc:
            self.event(0, "disconnect", repr(exc))
            return DISCONNECTED, f"no observation before the first step: {exc!r}"
        stop = self.take_chunk(_predict(self.policy, 0, first.data), 0)
        if stop is not None:
            self.event(0, "policy_output", stop)
            return STOPPED, stop
        self.worker = InferenceWorker(self.policy, self.loop.observe_backlog)
        self.t0 = time.perf_counter()
        return None, ""

    def ticks(self) -> tuple[str, str]:
        loop, robot, period = self.loop, self.robot, self.loop.period
        tick = 0
        while tick < loop.n_steps:
            self.tick = tick
            t_tick = self.t0 + tick * period
            precise_sleep(t_tick - time.perf_counter())
            stop = self.take_chunk(self.worker.poll(), tick)
            if stop is not None:
                self.safe_stop(tick, "policy_output", stop)
                return STOPPED, stop
            obs, hold_kind, detail = None, None, ""
            try:
                obs = robot.get_observation()
            except TimeoutError as exc:
                hold_kind, detail = "hold_stale", f"camera timed out: {exc}"
            except ConnectionError as exc:
                self.safe_stop(tick, "disconnect", repr(exc))
                return DISCONNECTED, f"robot disconnected: {exc!r}"
            if obs is not None:
                age = time.perf_counter() - obs.t_capture
                if not _finite(obs.data):
                    hold_kind, detail = "hold_invalid", "non-finite observation"
                elif age > loop.max_obs_age_s:
                    hold_kind, detail = "hold_stale", f"observation {age * 1e3:.0f} ms old"
                else:
                    self.worker.submit(tick, obs.data, predict=tick % loop.infer_every == 0)
            planned = None if hold_kind else self.plan.action_at(tick)
            if hold_kind is None and planned is None:
                hold_kind, detail = "hold_no_action", "no planned action for this tick"
            flags = 0
            if hold_kind is not None:
                self.event(tick, hold_kind, detail)
                flags = INTERVENTION_BITS[hold_kind]
                self.hold_since = t_tick if self.hold_since is None else self.hold_since
                if time.perf_counter() - self.hold_since > loop.max_hold_s:
                    self.safe_stop(tick, "hold_timeout", f"held for more than {loop.max_hold_s} s")
                    return STOPPED, f"held for more than {loop.max_hold_s} s ({hold_kind}: {detail})"
                action, raw, index = self.safety.hold(self.last_action), None, -1
            else:
                self.hold_since = None
                raw, index = planned
                action, kinds = self.safety(raw, self.last_action)
                for kind in kinds:
                    self.event(tick, kind, f"policy {_fmt(raw)} -> {_fmt(action)}")
                    flags |= INTERVENTION_BITS[kind]
            try:
                self.send(action)
            except ConnectionError as exc:
                self.event(tick, "disconnect", repr(exc))
                return DISCONNECTED, f"robot disconnected: {exc!r}"
            t_action = time.perf_counter()
            self.step_s.append(t_action - t_tick)
            self.t_sent.append(t_action)
            if obs is not None:
                nan = np.full(robot.action_dim, np.nan, np.float32)
                # With hold="skip" nothing is sent and the last command stays in effect: log that one.
                in_effect = self.last_action if self.last_action is not None else nan
                self.record(tick, t_tick, obs, nan if raw is None else raw,
                            action if action is not None else in_effect, index, flags, t_action)
            # The next tick is the next one still ahead of the clock: a late tick is skipped, never run late.
            next_tick = max(tick + 1, math.floor((time.perf_counter() - self.t0) / period) + 1)
            if next_tick > tick + 1:
                self.missed_ticks += next_tick - tick - 1
                logger.info("tick %d overran: skipping %d ticks", tick, next_tick - tick - 1)
            tick = next_tick
        return COMPLETED, f"ran {loop.n_steps} ticks"

    def finish(self, status: str, reason: str, elapsed: float) -> EpisodeResult:
        steps = {k: np.stack(v) for k, v in self.rows.items()}
        executed = len(self.step_s)
        sent = self.t_sent
        timing = {
            "rate_hz": self.loop.rate_hz,
            # ticks executed per second, between the first and the last action sent
            "achieved_rate_hz": (len(sent) - 1) / (sent[-1] - sent[0]) if len(sent) > 1 else math.nan,
            "elapsed_s": elapsed,
            "t0": self.t0,  # time.perf_counter() at tick 0: the logged times are seconds after it
            "executed_ticks": executed,
            "missed_ticks": self.missed_ticks,
            "chunks": self.chunks,
            "dropped_actions": self.dropped,
            "skipped_observations": getattr(getattr(self, "worker", None), "skipped", 0),
            "unseen_observations": getattr(getattr(self, "worker", None), "unseen", 0),
            **_percentiles_ms(self.step_s, "step"),
            **_percentiles_ms(self.inference_s, "inference"),
        }
        return EpisodeResult(status, reason, steps, self.interventions, timing)


def run_episode(robot: ControlRobot, policy, loop: LoopConfig, safety: SafetyConfig) -> EpisodeResult:
    """Run one episode of `policy` on `robot` (module docstring). The robot stays connected afterwards."""
    return _Episode(robot, policy, loop, safety).run()


# -- logging -------------------------------------------------------------------------------------------------


def episode_schema(observation_spec: Mapping[str, tuple[tuple[int, ...], str]], action_dim: int
                   ) -> dict[str, tuple[tuple[int, ...], str]]:
    """Store schema for deployment episodes: the observation keys, `action`, and timing / safety keys."""
    schema = {key: (tuple(shape), str(dtype)) for key, (shape, dtype) in observation_spec.items()}
    schema.update({
        "action": ((action_dim,), "float32"),
        "policy_action": ((action_dim,), "float32"),
        "chunk_index": ((1,), "int32"),
        "intervention": ((1,), "int32"),
        "tick": ((1,), "int64"),
        "t_tick": ((1,), "float64"),
        "t_observation": ((1,), "float64"),
        "t_action": ((1,), "float64"),
    })
    return schema


def open_log(path, observation_spec, action_dim: int, attrs: Mapping[str, Any]) -> TrajectoryStore:
    """Open the store at `path` for appending, or create it; an existing store must have the same keys."""
    schema = episode_schema(observation_spec, action_dim)
    if not path.exists():
        return TrajectoryStore.create(path, schema, attrs)
    store = TrajectoryStore.open(path, mode="a")
    have = {k: (tuple(s), d.name) for k, (s, d) in store.schema.items()}
    if have != schema:
        raise ValueError(f"{path} holds keys {have}, but this deployment logs {schema}: use another output")
    return store


def log_episode(store: TrajectoryStore, result: EpisodeResult, *, task: str, source: str,
                seed: int | None = None, success: bool | None = None) -> int | None:
    """Append an episode to the store; returns its index (None when no step was executed)."""
    if result.n_steps == 0:
        return None
    meta = {"task": task, "seed": seed, "success": success, "source": source, "status": result.status,
            "reason": result.reason, "interventions": result.interventions,
            "timing": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.timing.items()}}
    return store.add_episode(result.steps, meta)


# -- a reference policy for dry runs, tests and benchmarks ---------------------------------------------------


@dataclass
class ReferencePolicyConfig:
    image_keys: list[str] = field(default_factory=lambda: ["agentview_image"])
    state_keys: list[str] = field(default_factory=lambda: ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"])
    state_dim: int = 9  # sum of the state keys' sizes
    action_dim: int = 7
    horizon: int = 8  # actions per chunk
    hidden: int = 128

    def __post_init__(self) -> None:
        if not self.image_keys:
            raise ValueError("ReferencePolicyConfig.image_keys: expected at least one camera key, got none")
        for name in ("state_dim", "action_dim", "horizon", "hidden"):
            if getattr(self, name) < (0 if name == "state_dim" else 1):
                raise ValueError(f"ReferencePolicyConfig.{name}: expected a positive size, got {getattr(self, name)}")


class ChunkHead(nn.Module):
    """Pooled features of every camera + state -> a chunk of actions in [-1, 1]: (B, D) -> (B, H, A)."""

    def __init__(self, in_dim: int, hidden: int, horizon: int, action_dim: int):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, horizon * action_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)).reshape(x.shape[0], self.horizon, self.action_dim)  # (B, H, A)


class ReferencePolicy(nn.Module):
    """The smallest policy of the Policy protocol over the streaming encoder: every camera's frame goes through
    the streaming encoder (cameras batched), the pooled features and the state feed an MLP chunk head.

    It exists so that `toto-deploy`, the tests and the benchmarks can drive the loop without `policies/`; the
    behavior-cloning policies there are the ones to deploy."""

    def __init__(self, stream: StreamingEncoder, config: ReferencePolicyConfig):
        super().__init__()
        self.stream, self.config = stream, config
        self.encoder = stream.encoder  # registered as a submodule for .to() / state_dict()
        self.head = ChunkHead(len(config.image_keys) * stream.encoder.dim + config.state_dim, config.hidden,
                              config.horizon, config.action_dim)
        self._queue: list[np.ndarray] = []

    def reset(self) -> None:
        self.stream.reset()
        self._queue = []

    def _inputs(self, obs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [k for k in (*self.config.image_keys, *self.config.state_keys) if k not in obs]
        if missing:
            raise KeyError(f"observation: expected keys {missing} (policy config), found {sorted(obs)}")
        frames = torch.stack([torch.as_tensor(np.asarray(obs[k])) for k in self.config.image_keys])  # (N, H, W, 3)
        state = [torch.as_tensor(np.asarray(obs[k], np.float32)).reshape(-1) for k in self.config.state_keys]
        state = torch.cat(state) if state else torch.zeros(0)
        if state.numel() != self.config.state_dim:
            raise ValueError(f"observation state: expected {self.config.state_dim} values from "
                             f"{self.config.state_keys}, found {state.numel()}")
        return frames, state

    @torch.no_grad()
    def observe(self, obs: Mapping[str, Any]) -> None:
        """Advance the streaming encoder by this frame without predicting (nothing to do for a one-frame window)."""
        if self.stream.window > 1:
            self.stream.step(self._inputs(obs)[0].to(self.encoder.device))

    @torch.no_grad()
    def predict_action_chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        frames, state = self._inputs(obs)
        pooled = self.stream.step(frames.to(self.encoder.device)).pooled  # (N, C), one row per camera
        x = torch.cat([pooled.reshape(1, -1), state[None].to(pooled)], dim=1)  # (1, N*C + S)
        return self.head(x)[0].cpu().numpy()  # (H, A)

    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        if not self._queue:
            self._queue = list(self.predict_action_chunk(obs))
        return self._queue.pop(0)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: image keys (B, H, W, 3) uint8, state keys (B, d), "action" (B, H, A) -> MSE of the chunk."""
        frames = torch.stack([batch[k] for k in self.config.image_keys], dim=1)  # (B, N, H, W, 3)
        b, n = frames.shape[:2]
        pooled = self.encoder(frames.reshape(b * n, 1, *frames.shape[2:])).pooled.reshape(b, -1)  # (B, N*C)
        state = [batch[k].float().reshape(b, -1) for k in self.config.state_keys]
        pred = self.head(torch.cat([pooled, *state], dim=1))
        loss = torch.nn.functional.mse_loss(pred, batch["action"].float())
        return loss, {"mse": float(loss)}


def describe(result: EpisodeResult) -> str:
    """One line about an episode: status, steps, rate, latencies, interventions."""
    t = result.timing
    kinds: dict[str, int] = {}
    for event in result.interventions:
        kinds[event["kind"]] = kinds.get(event["kind"], 0) + 1
    return (f"{result.status} ({result.reason}): {result.n_steps} steps logged, "
            f"{t['achieved_rate_hz']:.1f}/{t['rate_hz']:g} Hz, step p50 {t['step_p50_ms']:.1f} ms "
            f"p99 {t['step_p99_ms']:.1f} ms, inference p50 {t['inference_p50_ms']:.1f} ms, "
            f"{t['chunks']} chunks, {t['dropped_actions']} stale actions dropped, "
            f"interventions {kinds or 'none'}")


__all__ = [
    "COMPLETED", "DISCONNECTED", "INTERRUPTED", "INTERVENTION_BITS", "STOPPED", "ActionPlan", "Chunk",
    "ControlRobot", "EpisodeResult", "InferenceWorker", "LoopConfig", "ReferencePolicy", "ReferencePolicyConfig",
    "SafetyConfig", "SafetyFilter", "TimedObservation", "describe", "episode_schema", "log_episode", "open_log",
    "run_episode",
]
