"""The fixed-rate episode loop: a policy drives a robot, safely, and every tick is recorded.

    result = run_episode(robot, policy, LoopConfig(rate_hz=10, n_steps=100), SafetyConfig())

`robot` is anything with the `ControlRobot` shape (envs/robot.py adapts any LeRobot `Robot` to it): it returns
observations keyed as the policy expects, each with the time it was captured, and takes action vectors.
`policy` is any `toto_robot.policy_api.Policy`; the loop calls only `reset()` and `predict_action_chunk(obs)`,
and `observe(obs)` for the frames it does not predict from when the policy has temporal state
(`ObservingPolicy`).

Timing. Tick k is due at t0 + k / rate_hz; the loop sleeps until then, reads an observation, hands it to the
background inference worker (worker.py), and sends the action planned for tick k (plan.py: latency
compensation, chunk switch or blend). A tick the loop misses (an overrun) is skipped, never executed late:
ticks are counted from the clock, not from iterations.

Safety (`SafetyConfig`, safety.py), checked every tick, each intervention logged with its tick and time:
- actions are clipped to [action_low, action_high] and to max_delta away from the previous action;
- an observation older than `max_obs_age_s`, a camera that timed out, or a non-finite reading -> hold;
- no planned action for the tick (inference too slow) -> hold;
- holding longer than `max_hold_s` -> safe stop;
- a non-finite action chunk or an exception in the policy -> safe stop (the chunk is never executed);
- a robot or camera disconnect (ConnectionError) -> the episode ends, nothing more is sent;
- Ctrl-C (KeyboardInterrupt) -> safe stop, the episode is returned and can still be logged.
A safe stop sends one hold action (safety.py says what "hold" sends).

The result holds per step the observation, the action sent, the policy's raw action, the chunk index executed,
an intervention bitmask and the timing (`t_tick`, `t_observation`, `t_action`, seconds from the episode
start); episode_log.py appends it to a store.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from lerobot.utils.robot_utils import precise_sleep

from toto_robot.deploy.config import ControlRobot, LoopConfig, SafetyConfig, TimedObservation
from toto_robot.deploy.plan import ActionPlan
from toto_robot.deploy.safety import INTERVENTION_BITS, SafetyFilter
from toto_robot.deploy.worker import Chunk, InferenceWorker, predict_chunk

logger = logging.getLogger(__name__)

# Episode statuses: how run_episode ended.
COMPLETED, STOPPED, DISCONNECTED, INTERRUPTED = "completed", "stopped", "disconnected", "interrupted"


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
    return all(np.all(np.isfinite(v)) for v in obs.values()
               if np.issubdtype(np.asarray(v).dtype, np.floating))


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
            return (f"the policy returned a chunk of shape {actions.shape}; "
                    f"expected (H, {self.robot.action_dim})")
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
        stop = self.take_chunk(predict_chunk(self.policy, 0, first.data), 0)
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
