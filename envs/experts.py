"""Scripted experts: phase machines over privileged simulator state that drive the normalized action space.

Each expert is a policy (`reset()`, `select_action(obs) -> action in [-1, 1]`) that reads
`obs["privileged"]`, the env's `privileged_state()`, which the rollout runner adds for policies whose
`uses_privileged_state` is True. The end effector is steered by proportional control toward a target
position and a gripper-down orientation turned by a yaw; each phase ends when its target is reached (or after
a step budget) and the next phase takes over. Optional Gaussian action noise on the arm gives diverse
demonstrations; the noise is seeded through `reset(seed)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import robosuite.utils.transform_utils as T

from envs.robosuite_env import ACTION_DIM, check_task

OPEN, CLOSE = -1.0, 1.0
# The Panda's end effector pointing straight down (gripper x along world x, fingers closing along world y).
_DOWN = np.diag([1.0, -1.0, -1.0])


@dataclass
class ExpertConfig:
    noise: float = 0.0  # std of Gaussian noise added to the arm's normalized action
    pos_gain: float = 15.0  # normalized action per metre of position error
    rot_gain: float = 3.0  # normalized action per radian of orientation error
    max_speed: float = 1.0  # clip of the arm's position action

    def __post_init__(self) -> None:
        if self.noise < 0:
            raise ValueError(f"noise: must be >= 0, got {self.noise}")
        for name in ("pos_gain", "rot_gain", "max_speed"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")


@dataclass
class Command:
    """What one phase asks for this step."""

    pos: np.ndarray  # target end-effector position (world, m)
    yaw: float  # target rotation of the gripper about world z, from _DOWN
    gripper: float  # OPEN or CLOSE
    done: bool  # the phase's goal is reached: move to the next phase
    speed: float = 1.0  # scale on max_speed for this phase


def yaw_of(quat_xyzw: np.ndarray) -> float:
    m = T.quat2mat(quat_xyzw)
    return float(np.arctan2(m[1, 0], m[0, 0]))


def wrap(angle: float, period: float) -> float:
    """Angle folded into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def reached(eef: np.ndarray, target: np.ndarray, tol: float) -> bool:
    return bool(np.linalg.norm(eef - target) < tol)


class ScriptedExpert:
    """Base of the per-task experts: phase bookkeeping and the pose controller."""

    uses_privileged_state = True
    phases: tuple[str, ...] = ()

    def __init__(self, config: ExpertConfig | None = None):
        self.config = config or ExpertConfig()
        self.rng = np.random.default_rng(0)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = 0
        self.phase_steps = 0
        self.memory: dict[str, np.ndarray | float] = {}

    @property
    def phase_name(self) -> str:
        return self.phases[min(self.phase, len(self.phases) - 1)]

    def select_action(self, obs: dict) -> np.ndarray:
        if "privileged" not in obs:
            raise ValueError("scripted experts need obs['privileged'] (the env's privileged_state())")
        state = obs["privileged"]
        cmd = self.command(self.phase_name, state)
        if cmd.done and self.phase < len(self.phases) - 1:
            self.phase += 1
            self.phase_steps = 0
            cmd = self.command(self.phase_name, state)
        self.phase_steps += 1
        return self.to_action(state, cmd)

    def command(self, phase: str, s: dict[str, np.ndarray]) -> Command:
        raise NotImplementedError

    def to_action(self, s: dict[str, np.ndarray], cmd: Command) -> np.ndarray:
        cfg = self.config
        action = np.zeros(ACTION_DIM)
        speed = cfg.max_speed * cmd.speed
        action[:3] = np.clip(cfg.pos_gain * (cmd.pos - s["robot0_eef_pos"]), -speed, speed)
        target = T.mat2quat(_rot_z(cmd.yaw) @ _DOWN)
        err = T.quat_multiply(target, T.quat_inverse(s["robot0_eef_quat"]))  # world-frame rotation error
        if err[3] < 0:  # the shorter way round
            err = -err
        action[3:6] = np.clip(cfg.rot_gain * T.quat2axisangle(err), -1.0, 1.0)
        if cfg.noise > 0:
            action[:6] += self.rng.normal(0.0, cfg.noise, 6)
        action[6] = cmd.gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def timed_out(self, steps: int) -> bool:
        return self.phase_steps >= steps


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class PickExpert(ScriptedExpert):
    """Shared pick phases: hover above the object, descend, close, lift; start over if the object slips."""

    hover = 0.10  # m above the grasp point
    grasp_tol = 0.012  # m from the grasp point at which the fingers close
    close_steps = 8
    held_phases = ("lift", "carry", "lower")  # the object must be in the gripper
    yaw_period = np.pi / 2  # symmetry of the object about z (cube: quarter turn)

    def grasp_point(self, s: dict, obj: str) -> np.ndarray:
        return s[f"{obj}_pos"]  # the object's centre

    def grasp_yaw(self, s: dict, obj: str) -> float:
        return wrap(yaw_of(s[f"{obj}_quat"]), self.yaw_period)

    def lost(self, s: dict, obj: str) -> bool:
        """The end effector has risen since the grasp but the object has not: it is not held."""
        if "grasp_eef" not in self.memory:
            return False
        rose = s["robot0_eef_pos"][2] > self.memory["grasp_eef"][2] + 0.04
        return rose and self.grasp_point(s, obj)[2] < self.memory["grasp_obj_z"] + 0.015

    def restart(self) -> None:
        self.phase, self.phase_steps, self.memory = 0, 0, {}

    def let_go(self, phase: str, eef: np.ndarray, yaw: float, rise: float, speed: float = 1.0) -> Command:
        """The last two phases, `release` (open in place) then retreat (`rise` m straight up, at `speed`)."""
        if phase == "release":
            if self.phase_steps == 0:
                self.memory["release_eef"] = eef.copy()
            return Command(self.memory["release_eef"], yaw, OPEN, self.timed_out(8))
        return Command(self.memory["release_eef"] + np.array([0.0, 0.0, rise]), yaw, OPEN, False, speed=speed)

    def pick(self, phase: str, s: dict, obj: str, lift_to: float) -> Command | None:
        grasp, eef = self.grasp_point(s, obj), s["robot0_eef_pos"]
        if phase == "approach":
            yaw = self.memory.setdefault("yaw", self.grasp_yaw(s, obj))
            target = grasp + np.array([0.0, 0.0, self.hover])
            yaw_ok = abs(wrap(yaw_of(s["robot0_eef_quat"]) - yaw, 2 * np.pi)) < 0.08
            return Command(target, yaw, OPEN, (reached(eef, target, 0.015) and yaw_ok) or self.timed_out(80))
        yaw = self.memory["yaw"]
        if phase == "descend":
            return Command(grasp, yaw, OPEN, reached(eef, grasp, self.grasp_tol) or self.timed_out(40), speed=0.6)
        if phase == "close":
            if self.phase_steps == 0:
                self.memory["grasp_eef"] = eef.copy()
                self.memory["grasp_obj_z"] = float(grasp[2])
            return Command(self.memory["grasp_eef"], yaw, CLOSE, self.timed_out(self.close_steps))
        if phase in self.held_phases and self.lost(s, obj):
            self.restart()
            return self.pick("approach", s, obj, lift_to)
        if phase == "lift":
            target = np.array([eef[0], eef[1], lift_to])
            return Command(target, yaw, CLOSE, reached(eef, target, 0.02) or self.timed_out(60))
        return None


class LiftExpert(PickExpert):
    phases = ("approach", "descend", "close", "lift", "hold")

    def command(self, phase: str, s: dict) -> Command:
        cmd = self.pick(phase, s, "cube", lift_to=1.0)  # the table top is at 0.8 m
        if cmd is not None:
            return cmd
        return Command(s["robot0_eef_pos"], self.memory["yaw"], CLOSE, False)  # hold


class StackExpert(PickExpert):
    """Pick cube A, carry it above cube B, lower it until it rests, let go and back off."""

    phases = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")

    def grasp_yaw(self, s: dict, obj: str) -> float:
        # Of the two grasps of the cube, take the one whose fingers stay clear of cube B (they close along the
        # gripper's y axis, (sin yaw, -cos yaw)): the one most across the direction from A to B.
        to_b = s["cubeB_pos"][:2] - s["cubeA_pos"][:2]
        to_b = to_b / (np.linalg.norm(to_b) + 1e-9)
        base = super().grasp_yaw(s, obj)
        candidates = [base, wrap(base + np.pi / 2, np.pi)]
        return min(candidates, key=lambda y: abs(np.sin(y) * to_b[0] - np.cos(y) * to_b[1]) + 0.01 * abs(y))

    def command(self, phase: str, s: dict) -> Command:
        eef = s["robot0_eef_pos"]
        cmd = self.pick(phase, s, "cubeA", lift_to=s["cubeB_pos"][2] + 0.12)
        if cmd is not None:
            return cmd
        yaw = self.memory["yaw"]
        # cube A's offset from the end effector, measured once it is held
        offset = self.memory.setdefault("offset", s["cubeA_pos"] - eef)
        above_b = s["cubeB_pos"] + np.array([0.0, 0.0, 0.045 + 0.02]) - offset  # B half 0.025 + A half 0.02, 2 cm to drop
        if phase == "carry":
            target = above_b + np.array([0.0, 0.0, 0.05])
            return Command(target, yaw, CLOSE, reached(eef, target, 0.01) or self.timed_out(100))
        if phase == "lower":
            done = reached(eef, above_b, 0.006) or self.timed_out(40)
            return Command(above_b, yaw, CLOSE, done, speed=0.5)
        return self.let_go(phase, eef, yaw, rise=0.08, speed=0.5)  # release, retreat


class PickPlaceCanExpert(PickExpert):
    """Pick the can from the left bin, carry it over its target bin, lower it in and let go."""

    phases = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")
    carry_height = 0.2  # m above the bin floor
    # Aim short of the target compartment's centre, toward the robot: the far corner is at the arm's reach.
    aim_shift = 0.45  # fraction of the compartment's half size

    def grasp_yaw(self, s: dict, obj: str) -> float:
        return 0.0  # the can is round: keep the gripper's home yaw

    def command(self, phase: str, s: dict) -> Command:
        eef = s["robot0_eef_pos"]
        center = s["target_bin_pos"]  # centre of the can's compartment, at the bin floor
        carry_z = center[2] + self.carry_height
        cmd = self.pick(phase, s, "Can", lift_to=carry_z)
        if cmd is not None:
            return cmd
        half = s["bin_size"][:2] / 4  # a compartment is a quarter of the bin
        aim = center[:2] - self.aim_shift * half
        if phase == "carry":
            target = np.array([aim[0], aim[1], carry_z])
            return Command(target, 0.0, CLOSE, reached(eef, target, 0.015) or self.timed_out(80))
        if phase == "lower":
            target = np.array([aim[0], aim[1], center[2] + 0.1])
            return Command(target, 0.0, CLOSE, reached(eef, target, 0.01) or self.timed_out(30))
        return self.let_go(phase, eef, 0.0, rise=0.12)  # release, retreat


class DoorExpert(ScriptedExpert):
    """Grasp the lever handle from above, press it down to free the latch, pull the door open around its
    hinge while keeping the lever pressed."""

    phases = ("approach", "descend", "close", "turn", "pull")
    turn_angle = 0.9  # rad of lever rotation that frees the latch
    standoff = 0.015  # m from the handle's centre line toward the robot

    def handle_yaw(self, s: dict) -> float:
        # fingers (gripper y, which is -world y at yaw 0) close along the door's normal
        n = s["latch_axis"]
        return wrap(float(np.arctan2(n[0], -n[1])), np.pi)

    def command(self, phase: str, s: dict) -> Command:
        eef, handle = s["robot0_eef_pos"], s["handle_pos"]
        yaw = self.handle_yaw(s)
        # The hand is wider than the lever sticks out from the panel: grasp the lever's outer part.
        grasp = handle - self.standoff * s["latch_axis"]  # latch_axis points into the door
        if phase == "approach":
            target = grasp + np.array([0.0, 0.0, 0.08])
            yaw_ok = abs(wrap(yaw_of(s["robot0_eef_quat"]) - yaw, 2 * np.pi)) < 0.08
            return Command(target, yaw, OPEN, (reached(eef, target, 0.015) and yaw_ok) or self.timed_out(80))
        if phase == "descend":
            target = grasp + np.array([0.0, 0.0, -0.005])
            return Command(target, yaw, OPEN, reached(eef, target, 0.01) or self.timed_out(40), speed=0.6)
        if phase == "close":
            if self.phase_steps == 0:
                self.memory["grasp_eef"] = eef.copy()
            return Command(self.memory["grasp_eef"], yaw, CLOSE, self.timed_out(8))
        if phase == "turn":
            target = grasp + np.array([0.0, 0.0, -0.04])
            done = abs(float(s["handle_qpos"])) > self.turn_angle or self.timed_out(60)
            return Command(target, yaw, CLOSE, done, speed=0.8)
        # pull: move the handle along its circle around the hinge, a little ahead of where it is
        hinge = s["hinge_pos"]
        ahead = hinge + _rot_z(0.15) @ (grasp - hinge)
        target = np.array([ahead[0], ahead[1], grasp[2] - 0.02])
        return Command(target, yaw, CLOSE, False)


class SquareExpert(PickExpert):
    """Grasp the square nut by its handle, turn it square to the peg, carry its hole above the peg, lower it
    around the peg, let go and back off. Steered on the nut itself once it is held: the end effector moves by
    the nut's error, so a nut that hangs or slips in the fingers still goes where the peg is."""

    phases = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")
    yaw_period = np.pi  # the gripper is symmetric under a half turn about z
    clearance = 0.05  # m between the nut's underside and the peg's top while carrying
    peg_half_height = 0.1  # of the square peg's box (PegsArena)
    grasp_tol = 0.005  # the handle is thin: close only once the fingers are down around it
    max_yaw = 0.75 * np.pi  # rad from the home yaw that the gripper may turn to (the Panda's last joint)

    def grasp_point(self, s: dict, obj: str) -> np.ndarray:
        # The handle is 2 cm thick and lies on the table. The fingers touch the table with the end effector about
        # 8 mm above the handle's centre, and the pads reach 4 mm below it: grasp as low as the table lets them.
        return s["SquareNut_handle_pos"] + np.array([0.0, 0.0, 0.006])

    def grasp_yaw(self, s: dict, obj: str) -> float:
        # The handle sticks out along the nut's x axis: the fingers (gripper y) close across it, along nut y.
        return wrap(yaw_of(s["SquareNut_quat"]), self.yaw_period)

    def place_yaw(self, s: dict) -> float:
        """Gripper yaw that turns the held nut square to the peg. Of the quarter turns that do and that the wrist
        can reach, the one that points the handle most toward the robot (-x): a handle beyond the peg puts the
        hand at the edge of the arm's reach."""
        eef_yaw, nut_yaw = yaw_of(s["robot0_eef_quat"]), yaw_of(s["SquareNut_quat"])
        turn = -wrap(nut_yaw - yaw_of(s["peg_quat"]), np.pi / 2)
        turns = [turn + k * np.pi / 2 for k in range(-2, 3) if abs(eef_yaw + turn + k * np.pi / 2) <= self.max_yaw]
        return eef_yaw + min(turns, key=lambda t: np.cos(nut_yaw + t))  # the handle's direction after the turn

    def command(self, phase: str, s: dict) -> Command:
        eef, nut, peg = s["robot0_eef_pos"], s["SquareNut_pos"], s["peg_pos"]
        peg_top = peg[2] + self.peg_half_height
        carry_z = peg_top + self.clearance + 0.01  # nut centre: half its 2 cm thickness above its underside
        cmd = self.pick(phase, s, "SquareNut", lift_to=carry_z + (eef[2] - nut[2]))
        if cmd is not None:
            return cmd
        yaw = self.memory.setdefault("place_yaw", self.place_yaw(s))
        yaw_ok = abs(wrap(yaw_of(s["robot0_eef_quat"]) - yaw, 2 * np.pi)) < 0.05
        if phase == "carry":
            target = np.array([peg[0], peg[1], carry_z])
            done = (reached(nut, target, 0.006) and yaw_ok) or self.timed_out(120)
            return Command(eef + target - nut, yaw, CLOSE, done)
        if phase == "lower":
            target = np.array([peg[0], peg[1], peg_top - 0.04])  # 4 cm down the peg: the nut is around it
            done = nut[2] < target[2] + 0.005 or self.timed_out(60)
            return Command(eef + target - nut, yaw, CLOSE, done, speed=0.4)
        return self.let_go(phase, eef, yaw, rise=0.1, speed=0.5)  # release, retreat


EXPERTS: dict[str, type[ScriptedExpert]] = {
    "Lift": LiftExpert,
    "Stack": StackExpert,
    "PickPlaceCan": PickPlaceCanExpert,
    "Door": DoorExpert,
    "Square": SquareExpert,
}


def make_expert(task: str, noise: float = 0.0, **config) -> ScriptedExpert:
    """The scripted expert of `task` (see EXPERTS)."""
    check_task(task)
    return EXPERTS[task](ExpertConfig(noise=noise, **config))
