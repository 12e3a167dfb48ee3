"""LeRobot robot configs of the simulated arm and the fault-injecting wrapper (their robots: envs/sim_robot.py).

Importing this module registers the robot types `toto_sim` and `toto_faulty` with LeRobot, so that LeRobot's
own factory builds them, as its command lines (lerobot-record, lerobot-teleoperate) do:

    from lerobot.robots import make_robot_from_config
    robot = make_robot_from_config(SimRobotConfig(camera_names=["agentview"]))
    faulty = make_robot_from_config(FaultyRobotConfig(camera_names=[], faults=FaultConfig(dropped_frames=[3])))

On the command line: `--robot.type=toto_faulty --robot.faults.dropped_frames=[3]`.
The LeRobot plugin `lerobot_robot_toto` (plugins/) imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.robots import RobotConfig

from toto_robot.shapes import ROBOSUITE_PANDA
from toto_robot.typecheck import check_types

SIM_ROBOT_TYPE = "toto_sim"
FAULTY_ROBOT_TYPE = "toto_faulty"


@RobotConfig.register_subclass(SIM_ROBOT_TYPE)
@dataclass
class SimRobotConfig(RobotConfig):
    task: str = "Lift"
    camera_names: list[str] = field(default_factory=lambda: ["agentview"])  # robosuite cameras; [] for none
    image_size: int = ROBOSUITE_PANDA.image_size
    control_freq: int = 20  # Hz of simulated time per action
    horizon: int | None = None  # None: the task's default
    seed: int = 0  # seed of the first episode; reset(seed) starts another


@dataclass
class FaultConfig:
    """Faults by observation index i (0 = the first get_observation after connect) and at random rates."""

    camera_stall: list[list[int]] = field(default_factory=list)  # [start, stop) ranges: frames freeze
    dropped_frames: list[int] = field(default_factory=list)  # indices returning the previous frame again
    latency_spike: list[list[float]] = field(default_factory=list)  # [index, seconds]: returns that late
    nan_state: list[list[int]] = field(default_factory=list)  # [start, stop) ranges: state values are NaN
    disconnect_at: int | None = None  # from this index on, every call raises DeviceNotConnectedError
    drop_prob: float = 0.0  # random faults per observation, seeded
    spike_prob: float = 0.0
    spike_s: float = 0.2
    nan_prob: float = 0.0
    seed: int = 0
    camera_timeout_s: float = 0.5  # a frame older than this raises TimeoutError (LeRobot cameras' max_age_ms)

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("camera_stall", "nan_state"):
            for r in getattr(self, name):
                if len(r) != 2 or not 0 <= r[0] < r[1]:
                    raise ValueError(f"FaultConfig.{name}: expected [start, stop) ranges with 0 <= start < stop, "
                                     f"got {r}")
        for s in self.latency_spike:
            if len(s) != 2 or s[0] < 0 or s[1] <= 0:
                raise ValueError(f"FaultConfig.latency_spike: expected [index, seconds > 0] pairs, got {s}")
        for name in ("drop_prob", "spike_prob", "nan_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FaultConfig.{name}: expected a probability in [0, 1], got {getattr(self, name)}")


@RobotConfig.register_subclass(FAULTY_ROBOT_TYPE)
@dataclass
class FaultyRobotConfig(SimRobotConfig):
    """The simulated arm with the faults of `faults` injected. (Not any robot's config: a RobotConfig field
    would make LeRobot's config types recursive, which its command-line parser cannot build. Code wraps any
    robot with `FaultyRobot.wrap(robot, faults)`.)"""

    faults: FaultConfig = field(default_factory=FaultConfig)
