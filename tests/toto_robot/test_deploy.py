"""The deployment loop against an in-process robot double: rate, latency compensation, chunk rules, safety
(limits, stale / invalid observations, non-finite output, disconnect, Ctrl-C) and the episode log.

The double returns observations instantly and records what it is sent, so the loop's own behaviour is what is
measured; tests/envs/test_sim_robot.py runs the loop against the simulated robot and injected faults."""

import time

import numpy as np
import pytest
import torch
import zarr

from policies.reference import ReferencePolicy, ReferencePolicyConfig
from tests.commands import run_command
from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.deploy import (
    COMPLETED,
    DISCONNECTED,
    INTERRUPTED,
    INTERVENTION_BITS,
    STOPPED,
    ActionPlan,
    Chunk,
    LoopConfig,
    SafetyConfig,
    SafetyFilter,
    TimedObservation,
    log_episode,
    open_log,
    run_episode,
)
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.policy_api import Policy
from toto_robot.store import TrajectoryStore

A = 2  # action size of the doubles


class RobotDouble:
    """Observations: "clock" (1,) = capture time relative to `base`, "state" (2,). `faults` maps a
    get_observation index to "stale" (captured 1 s ago), "nan", "timeout", "disconnect" or "interrupt"."""

    action_dim = A

    def __init__(self, faults=None):
        self.base = time.perf_counter()
        self.faults = faults or {}
        self.calls = 0
        self.sent: list[tuple[float, np.ndarray]] = []

    def get_observation(self) -> TimedObservation:
        i, self.calls = self.calls, self.calls + 1
        fault = self.faults.get(i)
        if fault == "timeout":
            raise TimeoutError("camera frame too old")
        if fault == "disconnect" or (fault is None and self.faults.get("disconnect_from", 1 << 30) <= i):
            raise ConnectionError("robot unplugged")
        if fault == "interrupt":
            raise KeyboardInterrupt
        t = time.perf_counter() - (1.0 if fault == "stale" else 0.0)
        state = np.array([np.nan if fault == "nan" else 0.1, 0.2], np.float32)
        return TimedObservation({"clock": np.array([t - self.base]), "state": state}, t)

    def send_action(self, action: np.ndarray) -> None:
        if self.faults.get("disconnect_from", 1 << 30) <= self.calls - 1:
            raise ConnectionError("robot unplugged")
        self.sent.append((time.perf_counter(), np.array(action)))


class ClockPolicy:
    """Action i of a chunk = the time it is meant for (capture time + i periods), after `latency` seconds.
    Executed on time, every action equals the time of its tick; executed late, it lags by the delay."""

    def __init__(self, period: float, latency: float = 0.0, horizon: int = 8, nan_at_call: int | None = None,
                 raise_at_call: int | None = None):
        self.period, self.latency, self.horizon = period, latency, horizon
        self.nan_at_call, self.raise_at_call = nan_at_call, raise_at_call
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def predict_action_chunk(self, obs):
        i, self.calls = self.calls, self.calls + 1
        time.sleep(self.latency)
        if i == self.raise_at_call:
            raise RuntimeError("policy exploded")
        t = float(obs["clock"][0]) + self.period * np.arange(self.horizon)
        chunk = np.stack([t, np.full(self.horizon, 0.3)], axis=1).astype(np.float32)  # (H, A)
        if i == self.nan_at_call:
            chunk[2, 0] = np.nan
        return chunk

    def select_action(self, obs):
        return self.predict_action_chunk(obs)[0]

    def forward(self, batch):
        raise NotImplementedError("a test double for the control loop; never trained")


LOOSE = SafetyConfig(action_low=-1e6, action_high=1e6, max_delta=None, hold="zero", hold_keep=[1])


def test_holds_its_rate():
    loop = LoopConfig(rate_hz=20, n_steps=40)
    robot = RobotDouble()
    result = run_episode(robot, ClockPolicy(loop.period), loop, LOOSE)
    assert result.status == COMPLETED and result.timing["missed_ticks"] <= 2
    sent = np.array([t for t, _ in robot.sent])
    ratio = np.median(np.diff(sent)) / loop.period  # achieved / target period
    assert 0.9 < ratio < 1.1, ratio
    assert 0.85 < result.timing["achieved_rate_hz"] / loop.rate_hz < 1.1
    ticks = result.steps["tick"][:, 0]
    assert (np.diff(ticks) >= 1).all() and ticks[-1] == loop.n_steps - 1
    # every action goes out in its own tick: sent no later than half a period after the tick is due
    late = result.steps["t_action"][:, 0] - result.steps["t_tick"][:, 0]
    assert np.median(late) < loop.period / 2


def test_drops_actions_whose_time_has_passed():
    loop = LoopConfig(rate_hz=10, n_steps=30, max_obs_age_s=0.5)
    latency = 0.25  # two and a half ticks
    robot = RobotDouble()
    result = run_episode(robot, ClockPolicy(loop.period, latency=latency), loop, LOOSE)
    assert result.status == COMPLETED
    # from tick 5 on (the first chunk, computed before the clock started, is aligned to tick 0 by design)
    executed = (result.steps["intervention"][:, 0] == 0) & (result.steps["tick"][:, 0] >= 5)
    assert executed.sum() >= 15
    # the executed action is the one meant for its tick: within half a period of the tick's time
    tick_time = result.steps["t_tick"][executed, 0] + result.timing["t0"] - robot.base  # on the robot's clock
    error = result.steps["action"][executed, 0] - tick_time
    assert np.abs(error).max() < loop.period / 2, error
    assert (result.steps["chunk_index"][executed, 0] >= 2).all()  # actions 0 and 1 were already due
    assert result.timing["dropped_actions"] >= 2 * (result.timing["chunks"] - 1)


def test_without_compensation_the_same_policy_would_lag():
    """The check above can fail: executing a chunk from its first action lags by the inference delay."""
    plan = ActionPlan("switch", 4)
    chunk = Chunk(tick=10, actions=np.arange(8, dtype=np.float32)[:, None], t_start=0.0, t_end=0.0)
    assert plan.merge(chunk, now=13) == 3
    assert plan.action_at(13) == (np.float32(3.0), 3)
    assert plan.action_at(12) is None and plan.action_at(18) is None


class ObservingClockPolicy(ClockPolicy):
    """Records the capture time of every frame it is given, and whether it predicted from it."""

    def __init__(self, period: float, latency: float = 0.0):
        super().__init__(period, latency)
        self.seen: list[tuple[str, float]] = []

    def observe(self, obs):
        self.seen.append(("observe", float(obs["clock"][0])))

    def predict_action_chunk(self, obs):
        self.seen.append(("predict", float(obs["clock"][0])))
        return super().predict_action_chunk(obs)


def test_a_streaming_policy_sees_every_frame_in_order():
    loop = LoopConfig(rate_hz=40, n_steps=24, infer_every=3)
    policy = ObservingClockPolicy(loop.period)
    result = run_episode(RobotDouble(), policy, loop, LOOSE)
    assert result.status == COMPLETED and result.timing["unseen_observations"] == 0
    kinds = [k for k, _ in policy.seen]
    clocks = np.array([c for _, c in policy.seen])
    assert (np.diff(clocks) > 0).all()  # every frame once, in capture order
    # the start frame and every tick's frame (the worker may not have reached the last one or two at the end)
    assert 1 + loop.n_steps - 2 <= len(policy.seen) <= 1 + loop.n_steps
    assert kinds[:7] == ["predict", "predict", "observe", "observe", "predict", "observe", "observe"]
    # a policy without `observe` is only handed the frames it predicts from
    plain = ClockPolicy(loop.period)
    run_episode(RobotDouble(), plain, loop, LOOSE)
    assert plain.calls <= 1 + loop.n_steps // loop.infer_every


def test_a_slow_streaming_policy_loses_context_not_freshness():
    loop = LoopConfig(rate_hz=20, n_steps=30, observe_backlog=1, max_obs_age_s=0.5)
    policy = ObservingClockPolicy(loop.period, latency=3 * loop.period)  # each call takes three ticks
    result = run_episode(RobotDouble(), policy, loop, LOOSE)
    clocks = np.array([c for _, c in policy.seen])
    assert (np.diff(clocks) > 0).all()
    assert result.timing["unseen_observations"] > 0 and result.timing["skipped_observations"] > 0
    # at most one frame is observed before each prediction, so predictions stay fresh
    kinds = "".join(k[0] for k, _ in policy.seen)
    assert "oo" not in kinds, kinds
    off = ObservingClockPolicy(loop.period)
    run_episode(RobotDouble(), off, LoopConfig(rate_hz=40, n_steps=12, observe_backlog=0), LOOSE)
    assert {k for k, _ in off.seen} == {"predict"}  # observe_backlog=0 turns observing off


def test_blend_cross_fades_and_switch_replaces():
    old = Chunk(0, np.zeros((8, 1), np.float32), 0.0, 0.0)
    new = Chunk(2, np.ones((8, 1), np.float32), 0.0, 0.0)
    switch, blend = ActionPlan("switch", 3), ActionPlan("blend", 3)
    for plan in (switch, blend):
        plan.merge(old, 0)
        plan.merge(new, 2)
    assert [float(switch.action_at(t)[0][0]) for t in (2, 3, 7)] == [1.0, 1.0, 1.0]
    weights = [float(blend.action_at(t)[0][0]) for t in range(2, 10)]
    assert weights == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_nonfinite_output_stops_and_is_never_sent():
    loop = LoopConfig(rate_hz=20, n_steps=40)
    robot = RobotDouble()
    result = run_episode(robot, ClockPolicy(loop.period, nan_at_call=4), loop, LOOSE)
    assert result.status == STOPPED and "non-finite" in result.reason
    assert result.n_steps < 40
    assert all(np.isfinite(a).all() for _, a in robot.sent)
    np.testing.assert_allclose(robot.sent[-1][1], [0.0, 0.3])  # the stop holds: zero, gripper kept
    assert result.interventions[-1]["kind"] == "policy_output"


def test_policy_exception_stops():
    loop = LoopConfig(rate_hz=20, n_steps=40)
    result = run_episode(RobotDouble(), ClockPolicy(loop.period, raise_at_call=3), loop, LOOSE)
    assert result.status == STOPPED and "policy exploded" in result.reason


def test_stale_or_invalid_observation_holds_then_resumes():
    loop = LoopConfig(rate_hz=20, n_steps=30, max_obs_age_s=0.2)
    faults = {8: "stale", 9: "stale", 12: "nan", 15: "timeout"}
    robot = RobotDouble(faults)
    result = run_episode(robot, ClockPolicy(loop.period), loop, LOOSE)
    assert result.status == COMPLETED
    kinds = [(e["kind"]) for e in result.interventions]
    assert kinds.count("hold_stale") == 3 and kinds.count("hold_invalid") == 1
    flags = result.steps["intervention"][:, 0]
    held = (flags & (INTERVENTION_BITS["hold_stale"] | INTERVENTION_BITS["hold_invalid"])) > 0
    assert held.sum() == 3  # the timed-out read has no observation to log
    np.testing.assert_allclose(result.steps["action"][held], [[0.0, 0.3]] * 3)
    assert np.isnan(result.steps["policy_action"][held]).all()
    assert (flags[-5:] == 0).all()  # back to the policy afterwards


def test_holding_too_long_stops():
    loop = LoopConfig(rate_hz=20, n_steps=60, max_hold_s=0.3)
    robot = RobotDouble({i: "timeout" for i in range(10, 60)})
    result = run_episode(robot, ClockPolicy(loop.period), loop, LOOSE)
    assert result.status == STOPPED and "held for more than 0.3 s" in result.reason
    assert result.interventions[-1]["kind"] == "hold_timeout"


def test_disconnect_ends_the_episode():
    loop = LoopConfig(rate_hz=20, n_steps=40)
    robot = RobotDouble({"disconnect_from": 10})
    result = run_episode(robot, ClockPolicy(loop.period), loop, LOOSE)
    assert result.status == DISCONNECTED and "unplugged" in result.reason
    assert len(robot.sent) <= 10
    kinds = [e["kind"] for e in result.interventions]
    assert kinds[-2:] == ["disconnect", "safe_stop_failed"]


def test_ctrl_c_stops_safely():
    loop = LoopConfig(rate_hz=20, n_steps=40)
    robot = RobotDouble({12: "interrupt"})
    result = run_episode(robot, ClockPolicy(loop.period), loop, LOOSE)
    assert result.status == INTERRUPTED
    np.testing.assert_allclose(robot.sent[-1][1], [0.0, 0.3])
    assert result.n_steps >= 8


def test_safety_filter_clips_and_limits_change():
    f = SafetyFilter(SafetyConfig(action_low=[-1, 0], action_high=[1, 0.5], max_delta=0.2, hold="last"), 2)
    action, kinds = f(np.array([2.0, 0.1], np.float32), last=np.array([0.5, 0.1], np.float32))
    np.testing.assert_allclose(action, [0.7, 0.1])
    assert kinds == ["clip_limit", "clip_delta"]
    np.testing.assert_allclose(f.hold(np.array([0.3, 0.2], np.float32)), [0.3, 0.2])
    assert f.hold(None) is None


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LoopConfig(rate_hz=0), "LoopConfig.rate_hz: expected a rate in (0, 1000] Hz, got 0"),
        (lambda: LoopConfig(chunk_rule="mix"), "LoopConfig.chunk_rule: expected one of ('switch', 'blend'), got 'mix'"),
        (lambda: SafetyConfig(hold="freeze"), "SafetyConfig.hold: expected one of ('zero', 'last', 'skip')"),
        (lambda: SafetyConfig(action_low=1, action_high=0), "expected finite action_low <= action_high"),
        (lambda: SafetyFilter(SafetyConfig(action_low=[0, 0, 0]), 2), "expected a scalar or 2 values"),
        (lambda: SafetyFilter(SafetyConfig(hold_keep=[5]), 2), "SafetyConfig.hold_keep: expected dims in [0, 2)"),
    ],
)
def test_bad_config_names_the_field(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value)


class CameraDouble(RobotDouble):
    """64 px frames of a moving square plus a 9-value state, for the reference policy."""

    action_dim = 7

    def __init__(self, faults=None):
        super().__init__(faults)
        self.frames = moving_squares(1, 64, size=64)[0]

    def get_observation(self) -> TimedObservation:
        obs = super().get_observation()
        i = (self.calls - 1) % len(self.frames)
        return TimedObservation({"agentview_image": self.frames[i], "state": np.full(9, 0.1, np.float32)},
                                obs.t_capture)


def reference_policy(window: int = 4) -> ReferencePolicy:
    tok, model = tiny_models(max_frames=window)
    stream = StreamingEncoder(TotoEncoder(tok, model), window=window)
    torch.manual_seed(0)
    return ReferencePolicy(stream, ReferencePolicyConfig(state_keys=["state"], horizon=4))


def test_reference_policy_is_a_policy_and_logs_a_readable_store(tmp_path):
    policy = reference_policy()
    assert isinstance(policy, Policy)
    loop = LoopConfig(rate_hz=10, n_steps=12)
    robot = CameraDouble({5: "stale"})
    result = run_episode(robot, policy, loop, SafetyConfig(hold_keep=[6]))
    assert result.status == COMPLETED and result.n_steps == 12 - result.timing["missed_ticks"]
    spec = {"agentview_image": ((64, 64, 3), "uint8"), "state": ((9,), "float32")}
    path = tmp_path / "deploy.zarr"
    store = open_log(path, spec, 7, {"fps": 10})
    index = log_episode(store, result, task="lift the red cube", source="deploy:double")
    assert index == 0

    back = TrajectoryStore.open(path)
    episode = back.episode(0)
    np.testing.assert_array_equal(episode["action"], result.steps["action"])
    np.testing.assert_array_equal(episode["agentview_image"], result.steps["agentview_image"])
    assert episode["agentview_image"].dtype == np.uint8 and episode["t_action"].dtype == np.float64
    meta = back.episode_meta(0)
    assert meta["status"] == COMPLETED and meta["timing"]["chunks"] >= 1
    assert [e["kind"] for e in meta["interventions"]].count("hold_stale") == 1
    # diffusion_policy's ReplayBuffer layout, read with plain zarr
    root = zarr.open_group(path, mode="r")
    assert list(root["meta/episode_ends"][:]) == [result.n_steps]
    assert root["data/action"].shape == (result.n_steps, 7)

    # appending with other keys is refused, naming both
    with pytest.raises(ValueError, match=r"holds the schema \{.*\}, but the caller needs \{state: \(9,\) float32"):
        open_log(path, {"state": ((9,), "float32")}, 7, {})


def test_reference_policy_rejects_missing_keys():
    with pytest.raises(KeyError, match=r"expected keys \['agentview_image'\]"):
        reference_policy().predict_action_chunk({"state": np.zeros(9, np.float32)})


@pytest.mark.render
def test_toto_deploy_dry_run_with_faults(tmp_path):
    """The default dry run (simulated arm, reference policy), shortened, with a camera stall and a disconnect."""
    # a generous max_hold_s: on a loaded machine the stall's held ticks can last past the default 1 s and
    # end the episode in a safety stop before the disconnect this test is about
    out = run_command("deploy", "loop.n_steps=40", "loop.max_hold_s=10", "+faults.camera_stall=[[4,10]]",
                      "+faults.disconnect_at=20", cwd=tmp_path)
    assert out.returncode == 3, out.stderr  # a disconnect is a stop, not a completed run
    assert "toto-deploy: stopped: episode 0 disconnected" in out.stderr
    assert "wrote 1 episodes" in out.stdout and "outputs/deploy/sim.zarr" in out.stdout
    assert "disconnected (robot disconnected" in out.stdout
    meta = TrajectoryStore.open(tmp_path / "outputs/deploy/sim.zarr").episode_meta(0)
    assert meta["source"] == "deploy:sim" and meta["status"] == DISCONNECTED
    assert "hold_stale" in {e["kind"] for e in meta["interventions"]}


def test_toto_deploy_bad_input_exits_with_a_clear_message(tmp_path):
    out = run_command("deploy", "robot.lerobot.type=ur5", cwd=tmp_path)
    assert out.returncode == 2
    assert "robot type: expected one of [" in out.stderr and "got 'ur5'" in out.stderr
    assert "Traceback" not in out.stderr
