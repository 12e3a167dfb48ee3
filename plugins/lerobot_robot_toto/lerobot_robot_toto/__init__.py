"""LeRobot robot plugin: the simulated arm (`toto_sim`) and the fault-injecting wrapper (`toto_faulty`).

Importing registers both robot configs; LeRobot's make_robot_from_config then finds their robots in
envs/sim_robot.py by its naming convention, so lerobot-record and lerobot-teleoperate take
`--robot.type=toto_sim` (or `--robot.type=toto_faulty --robot.faults.dropped_frames=[3]`).
"""

from envs.config_sim_robot import (
    FAULTY_ROBOT_TYPE,
    SIM_ROBOT_TYPE,
    FaultConfig,
    FaultyRobotConfig,
    SimRobotConfig,
)

__all__ = ["FAULTY_ROBOT_TYPE", "SIM_ROBOT_TYPE", "FaultConfig", "FaultyRobotConfig", "SimRobotConfig"]
