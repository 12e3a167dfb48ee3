"""toto-corpus: the store pretraining reads, held-out tasks, the behaviour mix, seeds, errors, the command."""

from dataclasses import replace

import numpy as np
import pytest
from omegaconf import OmegaConf

from envs.corpus import (
    BEHAVIOURS,
    CorpusConfig,
    ExplorerConfig,
    WaypointExplorer,
    behaviour_of,
    build_corpus,
    corpus_policies,
)
from envs.randomization import RandomizationConfig
from envs.robosuite_env import RobosuiteEnv
from envs.runner import EVAL_SEED_START, rollout
from pretrain.data import Mixture, ZarrSource, build_sources, write_video
from tests.commands import run_command
from toto_robot.config import CONFIG_DIR
from toto_robot.store import TrajectoryStore

NO_TEXTURE = {"texture": {"enabled": False}}  # camera and lighting only: texture uploads cost ~0.7 s a reset


@pytest.mark.render
def test_corpus_is_read_by_zarr_source_holds_out_tasks_and_resumes(tmp_path):
    path = tmp_path / "corpus.zarr"
    config = CorpusConfig(tasks=("Lift", "PickPlaceCan", "Door"), holdout_tasks=("PickPlaceCan",),
                          episodes_per_task=1, behaviours={"expert": 0.5, "waypoints": 0.5},
                          cameras=("agentview", "robot0_eye_in_hand"), image_size=32, horizon=10,
                          randomization=NO_TEXTURE)
    run = build_corpus(path, config, progress=False)
    assert run.episodes == 2 and run.steps == 20 and run.frames_per_second > 0

    store = TrajectoryStore.open(path)
    assert set(store.keys) == {"agentview_image", "robot0_eye_in_hand_image", "action"}  # no state, no objects
    assert store.attrs["tasks"] == ["Lift", "Door"] and store.attrs["holdout_tasks"] == ["PickPlaceCan"]
    metas = [store.episode_meta(i) for i in range(store.n_episodes)]
    assert [m["task_name"] for m in metas] == ["Lift", "Door"]
    assert metas[1]["task"] == "open the door" and metas[0]["seed"] == metas[1]["seed"] == config.seed_start

    source = ZarrSource("corpus", path, size=16, clip_frames=4, stride=2)
    assert sorted(source.items()) == ["0/agentview_image", "0/robot0_eye_in_hand_image",
                                      "1/agentview_image", "1/robot0_eye_in_hand_image"]
    clips = [clip for item in source.items() for clip in source.clips(item)]
    assert len(clips) == 4  # 10 frames: one clip of 4 frames, one in every 2, per camera
    for clip in clips:
        assert clip.shape == (4, 16, 16, 3) and clip.dtype == np.uint8
        assert clip.std() > 5  # a rendered scene, not a blank buffer

    # resume: one more episode per task, round robin, the next seed of each task
    run = build_corpus(path, replace(config, episodes_per_task=2), progress=False)
    assert run.episodes == 2
    metas = [run.store.episode_meta(i) for i in range(run.store.n_episodes)]
    assert [(m["task_name"], m["seed"]) for m in metas] == [
        ("Lift", 50_000), ("Door", 50_000), ("Lift", 50_001), ("Door", 50_001)]
    assert all(m["behaviour"] == behaviour_of(m["seed"], m["task_name"], config.behaviours) for m in metas)
    assert all(m["seed"] < EVAL_SEED_START for m in metas)
    assert build_corpus(path, replace(config, episodes_per_task=2), progress=False).episodes == 0  # complete

    with pytest.raises(ValueError, match=r"was built with holdout_tasks=\['PickPlaceCan'\], not \[\]"):
        build_corpus(path, replace(config, holdout_tasks=()), progress=False)  # would leak the held-out task


@pytest.mark.render
def test_data_configs_read_the_corpus_alone_and_mixed_with_a_video_folder_or_demonstrations(tmp_path):
    path = tmp_path / "corpus.zarr"
    build_corpus(path, CorpusConfig(tasks=("Lift",), holdout_tasks=(), episodes_per_task=1, cameras=("agentview",),
                                    image_size=32, horizon=6, randomization=NO_TEXTURE), progress=False)
    write_video(tmp_path / "ego" / "clip.mp4", np.zeros((12, 32, 32, 3), np.uint8) + 128, fps=30)
    data = OmegaConf.load(f"{CONFIG_DIR}/data/robosuite_corpus.yaml")
    data.sources.robosuite.root = str(path)
    data.sources.ego = {"kind": "videos", "root": str(tmp_path / "ego"), "weight": 1.0}
    sources = build_sources(OmegaConf.to_container(data))
    assert [type(s).__name__ for s in sources] == ["ZarrSource", "VideoSource"]
    drawn = [next(Mixture(sources, seed=s)) for s in range(8)]
    assert {i for i, _ in drawn} == {0, 1}
    assert all(clip.shape == (data.clip_frames, data.resolution, data.resolution, 3) for _, clip in drawn)

    mixed = OmegaConf.load(f"{CONFIG_DIR}/data/demos_corpus.yaml")  # demonstrations + corpus, half and half
    mixed.sources.demos.root = mixed.sources.robosuite.root = str(path)
    mixed.clip_frames, mixed.frame_stride = 3, 1  # the 6-step episode holds no clip of the default 8 x 2
    sources = build_sources(OmegaConf.to_container(mixed))
    assert [(s.name, type(s).__name__) for s in sources] == [("demos", "ZarrSource"), ("robosuite", "ZarrSource")]
    drawn = [next(Mixture(sources, seed=s)) for s in range(8)]
    assert {i for i, _ in drawn} == {0, 1}
    assert all(clip.shape == (3, mixed.resolution, mixed.resolution, 3) for _, clip in drawn)


def test_behaviours_mix_as_configured_and_depend_on_the_seed_alone():
    fractions = {"expert": 0.2, "noisy_expert": 0.0, "waypoints": 0.8}
    drawn = [behaviour_of(seed, "Stack", fractions) for seed in range(2000)]
    assert "noisy_expert" not in drawn
    assert abs(drawn.count("expert") / len(drawn) - 0.2) < 0.03
    assert drawn == [behaviour_of(seed, "Stack", fractions) for seed in range(2000)]
    config = CorpusConfig(expert_noise=0.25)
    policies = corpus_policies("Door", config)
    assert set(policies) == set(BEHAVIOURS)
    assert policies["expert"].config.noise == 0.0 and policies["noisy_expert"].config.noise == 0.25
    assert isinstance(policies["waypoints"], WaypointExplorer)


def test_waypoint_explorer_moves_through_the_workspace_and_works_the_gripper():
    explorer = WaypointExplorer(ExplorerConfig(waypoint_steps=12))
    env = RobosuiteEnv("Lift", cameras=(), horizon=60)
    try:
        first = rollout(env, explorer, seed=1, record=True).steps
        again = rollout(env, explorer, seed=1, record=True).steps
    finally:
        env.close()
    actions, eef = first["action"], first["robot0_eef_pos"]
    np.testing.assert_array_equal(actions, again["action"])  # seeded
    assert np.abs(actions).max() <= 1.0 and set(np.unique(actions[:, 6])) == {-1.0, 1.0}  # opens and closes
    offsets = eef - eef[0]
    cfg = explorer.explorer
    assert (offsets > np.array(cfg.low) - 0.05).all() and (offsets < np.array(cfg.high) + 0.05).all()
    assert np.linalg.norm(offsets, axis=1).max() > 0.05  # it goes places
    assert len({tuple(np.round(a[:3], 1)) for a in actions}) > 5  # toward several targets


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"tasks": ("Lift", "Pour")}, "tasks: unknown task 'Pour'; valid tasks: Lift, Stack, PickPlaceCan, Door"),
        ({"holdout_tasks": ("Wipe",)}, "holdout_tasks: unknown task 'Wipe'; valid tasks: Lift, Stack"),
        ({"tasks": ("Lift", "Door"), "holdout_tasks": ("Door", "Lift")}, "holds out every task in tasks"),
        ({"behaviours": {"expert": 0.5, "waypoints": 0.4}}, "behaviours: fractions must sum to 1, got 0.9"),
        ({"behaviours": {"expert": 0.5, "random": 0.5}}, "behaviours: unknown ['random']"),
        ({"behaviours": {"noisy_expert": 1.0}, "expert_noise": 0.0}, "noisy_expert episodes need expert_noise > 0"),
        ({"seed_start": EVAL_SEED_START}, "seed_start: must be in [0, 100000)"),
        ({"seed_start": 99_999, "episodes_per_task": 2}, "seeds 99999..100000 would reach 100000"),
        ({"cameras": ("sideview",)}, "unknown camera 'sideview' for task PickPlaceCan"),
        ({"tasks": "Pour"}, "tasks: unknown task 'Pour'"),
        ({"randomization": {"camera": {"position": 0, "rotation": 0, "fovy": 0}}}, "every perturbation size 0"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(overrides, message):
    holdout = {"holdout_tasks": ()} if "cameras" in overrides else {}
    with pytest.raises(ValueError) as err:
        CorpusConfig(**(holdout | overrides))
    assert message in str(err.value)


@pytest.mark.render
def test_resumed_corpus_seeds_never_reach_the_evaluation_seeds(tmp_path):
    config = CorpusConfig(tasks=("Lift",), holdout_tasks=(), episodes_per_task=1, cameras=("agentview",),
                          image_size=32, horizon=4, randomization=RandomizationConfig.off())
    store = build_corpus(tmp_path / "c.zarr", config, progress=False).store
    store.update_attrs({"next_seed": {"Lift": EVAL_SEED_START - 1}})  # as after ~50000 episodes
    with pytest.raises(ValueError, match="corpus seeds of Lift would reach 100000"):
        build_corpus(tmp_path / "c.zarr", replace(config, episodes_per_task=3), progress=False)


@pytest.mark.render
def test_command_end_to_end(tmp_path):
    out = run_command("corpus", "tasks=[Lift,Door]", "holdout_tasks=[Door]", "episodes_per_task=1",
                      "horizon=5", "image_size=32", "cameras=[agentview]",
                      "randomization.texture.enabled=false", "progress=false", "output=c.zarr", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "wrote 1 episodes" in out.stdout and "c.zarr" in out.stdout and "held out: Door" in out.stdout
    store = TrajectoryStore.open(tmp_path / "c.zarr")
    assert store.n_episodes == 1 and store.episode_meta(0)["task_name"] == "Lift"


@pytest.mark.parametrize(
    "override, message",
    [
        ("tasks=[Lift,Pour]", "unknown task 'Pour'; valid tasks: Lift, Stack, PickPlaceCan, Door"),
        ("behaviours.expert=0.5", "behaviours: fractions must sum to 1, got 1.2"),
    ],
)
def test_command_bad_input_exits_2_with_one_line(tmp_path, override, message):
    out = run_command("corpus", override, "output=c.zarr", cwd=tmp_path)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]  # after robosuite's import-time warnings
    assert last.startswith("toto-corpus: error: ") and message in last
    assert "Traceback" not in out.stderr and not (tmp_path / "c.zarr").exists()
