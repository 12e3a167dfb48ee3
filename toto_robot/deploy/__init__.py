"""Deployment: a policy drives a robot at a fixed rate, safely, and every episode is logged.

    result = run_episode(robot, policy, LoopConfig(rate_hz=10, n_steps=100), SafetyConfig())
    log_episode(store, result, task="lift the red cube", source="deploy:toto_sim")

One job per module, on numpy: none imports torch, the encoder or policies/ (the policy is passed in;
lerobot.utils, where loop.py takes precise_sleep from, still loads torch):
- config.py: `LoopConfig`, `SafetyConfig`, and the robot interface (`ControlRobot`, `TimedObservation`);
- safety.py: `SafetyFilter` (action limits, maximum change per tick, what "hold" sends), `INTERVENTION_BITS`;
- worker.py: `InferenceWorker`, the background thread that computes action chunks (`Chunk`);
- plan.py: `ActionPlan`, latency compensation and chunk switching / blending;
- loop.py: `run_episode`, the fixed-rate episode loop, its safety rules and its `EpisodeResult`;
- episode_log.py: `open_log` / `log_episode`, episodes appended to a Zarr `TrajectoryStore`.
A small torch policy to drive the loop in dry runs, tests and benchmarks is policies/reference.py.
"""

from toto_robot.deploy.config import ControlRobot, LoopConfig, SafetyConfig, TimedObservation
from toto_robot.deploy.episode_log import episode_schema, log_episode, open_log
from toto_robot.deploy.loop import (
    COMPLETED,
    DISCONNECTED,
    INTERRUPTED,
    STOPPED,
    EpisodeResult,
    describe,
    run_episode,
)
from toto_robot.deploy.plan import ActionPlan
from toto_robot.deploy.safety import INTERVENTION_BITS, SafetyFilter
from toto_robot.deploy.worker import Chunk, InferenceWorker

__all__ = [
    "COMPLETED", "DISCONNECTED", "INTERRUPTED", "INTERVENTION_BITS", "STOPPED", "ActionPlan", "Chunk",
    "ControlRobot", "EpisodeResult", "InferenceWorker", "LoopConfig", "SafetyConfig", "SafetyFilter",
    "TimedObservation", "describe", "episode_schema", "log_episode", "open_log", "run_episode",
]
