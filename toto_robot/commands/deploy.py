"""``toto-deploy``: run a policy on a robot (LeRobot, or our simulated arm) at a fixed rate, log every episode.

    toto-deploy                                    # dry run: reference policy, simulated Lift arm, 50 ticks at 10 Hz
    toto-deploy loop.rate_hz=20 loop.chunk_rule=blend n_episodes=3 encoder.path=outputs/demo/encoder
    toto-deploy +faults.camera_stall=[[20,30]] +faults.nan_state=[[35,37]] +faults.disconnect_at=45
    toto-deploy robot=so101 robot.lerobot.port=/dev/ttyACM0 \
        +policy._target_=policies.bc.BCPolicy.load +policy.path=outputs/bc/Lift-toto_flat_aug/best

`policy` is the string "reference" in configs/deploy.yaml, so a policy built from a `_target_` replaces it with
`+policy.<key>=...` overrides (the `+` adds keys the config does not have). Options live in
configs/deploy.yaml and configs/robot/*.yaml. Episodes are appended to a Zarr store
(outputs/deploy/<robot>.zarr by default) in the layout toto-collect writes, with timing and interventions.
Exit status: 0 when every episode completed, 3 when one ended in a safety stop or a lost robot (each is logged;
a lost robot ends the run), 2 for bad input; Ctrl-C stops the robot safely, logs the episode so far and exits
with status 130.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from envs.robot import LeRobotAdapter, RobotMapping, make_lerobot_robot
from envs.sim_robot import FaultConfig, FaultyRobot
from policies.reference import ReferencePolicy, ReferencePolicyConfig
from toto_robot.commands.entry import Stopped, entry_point
from toto_robot.deploy import DISCONNECTED, INTERRUPTED, STOPPED, describe, log_episode, open_log, run_episode
from toto_robot.encoder import StreamingEncoder, TotoEncoder
from toto_robot.model import Transformer, model_preset
from toto_robot.tokenizer import Tokenizer, tokenizer_preset
from toto_robot.typecheck import build, check_value

logger = logging.getLogger("toto-deploy")


def reference_policy(cfg: DictConfig, mapping: RobotMapping, seed: int) -> ReferencePolicy:
    """The reference policy over a Toto checkpoint, or over a random tiny encoder for a dry run."""
    if cfg.encoder.path:
        encoder = TotoEncoder.from_pretrained(cfg.encoder.path, layer=cfg.encoder.layer)
    else:
        torch.manual_seed(seed)
        tok = Tokenizer(tokenizer_preset("tiny"))
        p = tok.cfg.tokens_per_frame
        model = Transformer(model_preset("tiny", codebook_size=tok.vocab_size, tokens_per_frame=p,
                                         max_seq_len=2 + cfg.encoder.window * p))
        encoder = TotoEncoder(tok, model, layer=cfg.encoder.layer)
        print("policy: reference policy over a randomly initialised tiny encoder (a dry run: actions are "
              "not trained)")
    if mapping.image_size != encoder.image_size:
        raise ValueError(f"robot.mapping.image_size: the encoder takes {encoder.image_size} px images, the "
                         f"mapping delivers {mapping.image_size}")
    config = ReferencePolicyConfig(
        image_keys=list(mapping.cameras), state_keys=list(mapping.state),
        state_dim=sum(len(v) for v in mapping.state.values()), action_dim=len(mapping.action), horizon=cfg.horizon,
    )
    return ReferencePolicy(StreamingEncoder(encoder, window=cfg.encoder.window, mode=cfg.encoder.mode), config)


def run(cfg: DictConfig) -> Path:
    check_value("n_episodes", cfg.n_episodes, int)
    if cfg.n_episodes < 1:
        raise ValueError(f"n_episodes: expected an integer >= 1, found {cfg.n_episodes}")
    check_value("seed", cfg.seed, int)
    check_value("threads", cfg.threads, int | None)
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads: expected an integer >= 1 or null, found {cfg.threads}")
    if not (cfg.policy == "reference" or (OmegaConf.is_dict(cfg.policy) and "_target_" in cfg.policy)):
        raise ValueError(f"policy: expected 'reference' or a config with _target_ "
                         f"(+policy._target_=... +policy.<key>=...), found {cfg.policy}")
    faults = None
    if cfg.faults is not None:
        faults = build(FaultConfig, OmegaConf.to_container(cfg.faults, resolve=True), "faults")
    loop = instantiate(cfg.loop)
    safety = instantiate(cfg.robot.safety, _convert_="all")
    mapping = RobotMapping(**OmegaConf.to_container(cfg.robot.mapping, resolve=True))
    if cfg.policy == "reference":
        policy = reference_policy(cfg, mapping, cfg.seed)
    else:
        policy = instantiate(cfg.policy)
    robot = make_lerobot_robot(OmegaConf.to_container(cfg.robot.lerobot, resolve=True))
    if faults is not None:
        robot = FaultyRobot.wrap(robot, faults)
    output = Path(cfg.output) if cfg.output else Path("outputs/deploy") / f"{cfg.robot.name}.zarr"
    adapter = LeRobotAdapter(robot, mapping)
    store = open_log(output, adapter.observation_spec(), adapter.action_dim,
                     {"fps": loop.rate_hz, "robot": OmegaConf.to_container(cfg.robot, resolve=True),
                      "robot_type": cfg.robot.lerobot.type,
                      "instruction": cfg.robot.instruction})
    interrupted, stops = False, []
    with adapter:
        for episode in range(cfg.n_episodes):
            seed = cfg.seed + episode
            adapter.begin_episode(seed)
            result = run_episode(adapter, policy, loop, safety)
            index = log_episode(store, result, task=cfg.robot.instruction, source=f"deploy:{cfg.robot.name}",
                                seed=seed, success=adapter.success)
            print(f"episode {episode} (seed {seed}): {describe(result)}")
            if index is not None:
                print(f"  logged as episode {index} of {store.path}")
            if result.status in (STOPPED, DISCONNECTED):
                stops.append(f"episode {episode} {result.status} ({result.reason})")
            if result.status in (INTERRUPTED, DISCONNECTED):
                interrupted = result.status == INTERRUPTED
                break
    print(f"wrote {store.n_episodes} episodes ({store.n_steps} steps) to {store.path}")
    if interrupted:
        sys.exit(130)
    if stops:
        raise Stopped(f"{'; '.join(stops)}; logged in {store.path}")
    return store.path


def run_logged(cfg: DictConfig) -> Path:
    """`run` with warnings (safety clamps, dropped frames) on stderr as `LEVEL logger: message`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(cfg)


# KeyError: a mapping naming an observation or action key the robot does not have. Ctrl-C outside an
# episode (connecting, writing) exits 130 with the robot disconnected on the way out.
main = entry_point("deploy", "deploy", run_logged, errors=(KeyError,))


if __name__ == "__main__":
    main()
