"""Bad input to every command and to the public loaders: exit status 2 (3 for a stopped deployment), one line
on stderr that names what was expected and what was found, and nothing written or changed on disk.

Most cases run in-process through the shared entry point (toto_robot/commands/entry.py): sys.argv is set and
the command's `main` is called, as a console script would. A few run in a fresh interpreter for the real exit
status. Fixtures are tiny: 64 px two-episode stores, random tiny checkpoints, one 8-frame video.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.data import write_video
from tests.commands import run_command
from tests.policies.test_bc import make_store
from tests.toto_robot.helpers import tiny_models
from toto_robot.checkpoint import (
    load_tokenizer,
    load_toto,
    load_train_state,
    read_checkpoint,
    read_config,
    save_checkpoint,
    save_tokenizer,
    save_toto,
)
from toto_robot.commands.convert import main as convert_main
from toto_robot.commands.entry import EXIT_BAD_INPUT, EXIT_STOPPED, entry_point
from toto_robot.lerobot_io import export_lerobot, import_lerobot
from toto_robot.synthetic import moving_squares
from toto_robot.typecheck import build, check_value

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ fixtures: tiny inputs, made once
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Every file a case points at: a store with an env, a store without one, checkpoints good and broken."""
    root = tmp_path_factory.mktemp("inputs")
    store = make_store(root / "lift.zarr", n_episodes=2, steps=4)
    from toto_robot.store import TrajectoryStore

    TrajectoryStore.open(store, mode="a").update_attrs(
        {"env": {"task": "Lift", "cameras": ["agentview", "robot0_eye_in_hand"], "image_size": 64}})
    tok, model = tiny_models(max_frames=8)
    toto = save_toto(root / "toto", tok, model)
    no_model = save_toto(root / "no_model", tok, model)
    (no_model / "model.safetensors").unlink()
    cut_weights = save_toto(root / "cut_weights", tok, model)
    data = (cut_weights / "model.safetensors").read_bytes()
    (cut_weights / "model.safetensors").write_bytes(data[: len(data) // 2])
    cut_json = save_toto(root / "cut_json", tok, model)
    text = (cut_json / "config.json").read_text()
    (cut_json / "config.json").write_text(text[: len(text) // 2])
    tokenizer = save_tokenizer(root / "tokenizer", tok)
    videos = root / "videos"
    write_video(videos / "v0.mp4", moving_squares(1, 8, size=32, seed=0)[0], fps=10)
    lerobot = root / "lerobot"
    (lerobot / "meta").mkdir(parents=True)
    (lerobot / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 20}))
    no_data = root / "lerobot_no_data"
    (no_data / "meta").mkdir(parents=True)
    (no_data / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 20, "features": {}}))
    cut_info = root / "lerobot_cut_info"
    (cut_info / "meta").mkdir(parents=True)
    (cut_info / "meta" / "info.json").write_text('{"codebase_version": "v3.0", "feat')
    return {"store": store, "bare_store": make_store(root / "bare.zarr", n_episodes=1, steps=3), "toto": toto,
            "no_model": no_model, "cut_weights": cut_weights, "cut_json": cut_json, "tokenizer": tokenizer,
            "videos": videos, "lerobot": lerobot, "no_data": no_data, "cut_info": cut_info, "root": root}


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime) of every file under `roots`, hydra's own records (.hydra/, the job's log file)
    left out."""
    files = {}
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file() and ".hydra" not in p.parts and p.name != "demo.log":
                st = p.stat()
                files[str(p)] = (st.st_size, st.st_mtime_ns)
    return files


def call(module: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run toto_robot.commands.<module>'s main in-process; returns (exit status, stderr)."""
    main = importlib.import_module(f"toto_robot.commands.{module}").main
    monkeypatch.setattr("sys.argv", [f"toto-{module}", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def assert_one_line(err: str, command: str, *fragments: str, kind: str = "error") -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"toto-{command}: {kind}: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


# ------------------------------------------------------------------ every command, in-process
I = "{inputs}"  # placeholder for the inputs folder in the table below
CASES = [
    # hydra cannot compose the overrides
    ("collect", ["foo=1"], ["expected a key of configs/collect.yaml", "found no key 'foo'", "+foo=1"]),
    ("deploy", ["loop.foo=3"], ["expected a key of configs/deploy.yaml", "found no key 'loop.foo'"]),
    ("evaluate", ["policy=smart"], ["configs/eval.yaml", "Could not find 'policy/smart'", "expected one of: checkpoint"]),
    ("deploy", ["robot=ur5"], ["Could not find 'robot/ur5'", "expected one of: sim, so101"]),
    ("pretrain", ["train.steps=["], ["override 'train.steps=['", "expected key=value"]),
    ("train_tokenizer", ["tokenizer_train.steps"], ["override 'tokenizer_train.steps'", "expected key=value"]),
    ("scaling", ["model=huge"], ["configs/pretrain/scaling.yaml", "Could not find 'model/huge'", "expected one of:"]),
    ("tokenize", ["data=nowhere"], ["Could not find 'data/nowhere'", "folder"]),
    # toto-deploy values
    ("deploy", ["loop.rate_hz=abc"], ["LoopConfig.rate_hz: expected a number, found 'abc'"]),
    ("deploy", ["loop.chunk_rule=zigzag"], ["LoopConfig.chunk_rule: expected one of", "'zigzag'"]),
    ("deploy", ["n_episodes=-1"], ["n_episodes: expected an integer >= 1, found -1"]),
    ("deploy", ["n_episodes=two"], ["n_episodes: expected an integer, found 'two'"]),
    ("deploy", ["+faults.bogus=1"], ["faults: expected keys among", "found unknown key 'bogus'"]),
    ("deploy", ["+faults.disconnect_at=soon"], ["FaultConfig.disconnect_at: expected an integer or null, found 'soon'"]),
    ("deploy", ["+policy._target_=nowhere.builder"],
     ["policy._target_: expected an importable callable, found 'nowhere.builder'"]),
    ("deploy", ["robot.lerobot.type=ur5"], ["robot type: expected one of [", "got 'ur5'"]),
    ("deploy", ["robot.safety.hold=float"], ["SafetyConfig.hold: expected one of", "'float'"]),
    # the pretraining commands
    ("train_tokenizer", ["tokenizer_train.steps=abc"], ["tokenizer_train.steps: expected an integer, found 'abc'"]),
    ("train_tokenizer", ["+tokenizer_train.foo=1"], ["tokenizer_train: expected keys among", "found unknown key 'foo'"]),
    ("train_tokenizer", ["data.resolution=abc"], ["data.resolution: expected an integer, found 'abc'"]),
    ("train_tokenizer", ["data=folder", "data.sources.videos.root=/nonexistent/videos"],
     ["expected a directory of videos at /nonexistent/videos, found nothing"]),
    ("train_tokenizer", ["data=folder", f"data.sources.videos.root={I}/videos", "tokenizer.preset=huge"],
     ["tokenizer preset: expected one of", "got 'huge'"]),
    ("train_tokenizer", ["data=folder", f"data.sources.videos.root={I}/videos", "data.resolution=32",
                         "tokenizer_train.lr=-1"], ["tokenizer_train.lr: expected a learning rate > 0, found -1"]),
    ("train_tokenizer", ["data=folder", f"data.sources.videos.root={I}/videos", "data.resolution=32",
                         "tokenizer_train.steps=0"], ["tokenizer_train.steps: expected a positive integer, found 0"]),
    ("pretrain", ["train.steps=abc"], ["TrainConfig.steps: expected an integer, found 'abc'"]),
    ("pretrain", ["+train.foo=3"], ["train: expected keys among", "found unknown key 'foo'"]),
    ("pretrain", ["train.strategy=zero3"], ["expected one of ('none', 'ddp', 'fsdp'), got 'zero3'"]),
    ("pretrain", ["train.held_out=most"], ["TrainConfig.held_out: expected a number, found 'most'"]),
    ("pretrain", ["data.sources.synthetic.weight=heavy"], ["data.sources.synthetic.weight: expected a number, found 'heavy'"]),
    ("pretrain", ["shards=/nonexistent/tokens.zarr"], ["expected index.json in /nonexistent/tokens.zarr"]),
    ("tokenize", ["data=folder", f"data.sources.videos.root={I}/videos", "tokenizer_checkpoint=/nonexistent/tok"],
     ["checkpoint /nonexistent/tok: expected /nonexistent/tok/config.json, found no such file"]),
    ("tokenize", ["data=folder", f"data.sources.videos.root={I}/videos", f"tokenizer_checkpoint={I}/cut_json"],
     ["expected JSON in", "cut_json/config.json", "does not parse"]),
    ("tokenize", ["data=folder", f"data.sources.videos.root={I}/videos", f"tokenizer_checkpoint={I}/lift.zarr"],
     ["lift.zarr: expected", "config.json, found no such file"]),
    ("scaling", ["sizes=abc"], ["sizes: expected a list (a mapping each), found 'abc'"]),
    ("scaling", ["token_budgets=[a]"], ["token_budgets: expected a list (an integer each), found ['a']"]),
    # toto-train-bc: the store and the encoder
    ("train_bc", ["store=/nonexistent/s.zarr"], ["expected a trajectory store at /nonexistent/s.zarr"]),
    ("train_bc", [f"store={I}/bare.zarr"], ["no 'env' attribute"]),
    ("train_bc", [f"store={I}/lift.zarr", f"encoder={I}/no_model"], ["no_model: expected model.safetensors"]),
    ("train_bc", [f"store={I}/lift.zarr", f"encoder={I}/cut_weights"],
     ["expected a complete safetensors file at", "cut_weights/model.safetensors"]),
    ("train_bc", [f"store={I}/lift.zarr", f"encoder={I}/tokenizer"], ["expected kind 'toto', found 'tokenizer'"]),
    ("train_bc", [f"store={I}/lift.zarr", f"encoder={I}/cut_json"], ["expected JSON in", "cut_json/config.json"]),
    ("train_bc", [f"store={I}/lift.zarr", "+train.foo=1"], ["train: expected keys among", "found unknown key 'foo'"]),
    # the other commands
    ("probe_state", ["store=/nonexistent/s.zarr"], ["expected a trajectory store at /nonexistent/s.zarr"]),
    ("probe_state", [f"store={I}/lift.zarr", f"encoder={I}/tokenizer"], ["expected kind 'toto', found 'tokenizer'"]),
    ("collect", ["env.task=Pour"], ["unknown task 'Pour'; valid tasks: Lift, Stack, PickPlaceCan, Door"]),
    ("collect", ["policy=toto_mlp"], ["toto-collect rolls out scripted policies"]),
    ("evaluate", ["policy=toto_mlp"], ["expected a scripted policy (policy=expert, policy=random) or a trained one"]),
    ("corpus", ["behaviours.expert=0.5", "output=c.zarr"], ["behaviours: fractions must sum to 1, got 1.2"]),
    ("demo", ["collect.image_size=32"], ["tokenizer.image_size 64 must equal collect.image_size 32"]),
]


@pytest.mark.parametrize("module, argv, fragments", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_and_status_2(module, argv, fragments, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace(I, str(inputs["root"])) for a in argv]
    if module in ("train_tokenizer", "tokenize", "pretrain", "scaling"):
        argv = [f"work_dir={tmp_path / 'work'}", *argv]
    if module == "demo":
        argv = [f"out_dir={tmp_path / 'demo'}", *argv]
    before = snapshot(inputs["root"], tmp_path)
    status, err = call(module, argv, monkeypatch, capsys)
    assert status == EXIT_BAD_INPUT, err
    assert_one_line(err, module.replace("_", "-").replace("evaluate", "eval"), *fragments)
    assert snapshot(inputs["root"], tmp_path) == before  # nothing written, nothing changed


# ------------------------------------------------------------------ the deployment loop's stops
@pytest.mark.render
def test_a_disconnect_in_toto_deploy_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, err = call("deploy", ["loop.n_steps=12", "+faults.disconnect_at=3", "output=d.zarr"], monkeypatch, capsys)
    assert status == EXIT_STOPPED
    last = err.strip().splitlines()[-1]  # after the loop's own warnings
    assert last.startswith("toto-deploy: stopped: episode 0 disconnected (robot disconnected") and "d.zarr" in last


def test_the_documented_policy_override_reaches_the_builder(monkeypatch, capsys, tmp_path):
    """README / configs/deploy.yaml: +policy._target_=<builder> +policy.<key>=... composes and is instantiated."""
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr("toto_robot.commands.deploy.run_logged", lambda cfg: seen.update(policy=dict(cfg.policy)))
    from toto_robot.commands import deploy

    main = entry_point("deploy", "deploy", deploy.run_logged)
    monkeypatch.setattr("sys.argv", ["toto-deploy", "robot=so101", "+policy._target_=policies.bc.BCPolicy.load",
                                     "+policy.path=outputs/bc/Lift-toto_mlp/best"])
    main()
    assert seen["policy"] == {"_target_": "policies.bc.BCPolicy.load", "path": "outputs/bc/Lift-toto_mlp/best"}


# ------------------------------------------------------------------ toto-convert
@pytest.mark.parametrize("folder, fragments", [
    ("lerobot", ["lerobot/meta/info.json: expected the LeRobotDataset keys ['features']", "found only"]),
    ("no_data", ["expected the frames in", "lerobot_no_data/data", "found no such directory"]),
    ("cut_info", ["lerobot_cut_info/meta/info.json: expected JSON", "does not parse"]),
])
def test_convert_import_of_a_broken_lerobot_folder(folder, fragments, inputs, tmp_path, capsys):
    before = snapshot(inputs["root"])
    assert convert_main(["import", str(inputs[folder]), str(tmp_path / "s.zarr"), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert_one_line(err, "convert", *fragments)
    assert snapshot(inputs["root"]) == before and not (tmp_path / "s.zarr").exists()


def test_a_failed_export_leaves_nothing(inputs, tmp_path, monkeypatch, capsys):
    def fail_halfway(LeRobotDataset, store, out_dir, *args):
        (out_dir / "meta").mkdir(parents=True)
        (out_dir / "meta" / "info.json").write_text("{}")
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr("toto_robot.lerobot_io._write_lerobot", fail_halfway)
    out = tmp_path / "exported"
    assert convert_main(["export", str(inputs["store"]), str(out), "--quiet"]) == EXIT_BAD_INPUT
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither out nor the folder it was written in


def test_a_failed_import_leaves_no_store(inputs, tmp_path, monkeypatch):
    def fail(*args):
        raise ValueError("a frame that does not decode (simulated)")

    monkeypatch.setattr("toto_robot.lerobot_io._import_episodes", fail)
    exported = export_lerobot(inputs["store"], tmp_path / "exported", use_videos=False, progress=False)
    with pytest.raises(ValueError, match="does not decode"):
        import_lerobot(exported, tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------ the public loaders
def test_checkpoint_loaders_name_the_file_and_the_kind(inputs):
    with pytest.raises(FileNotFoundError, match=r"no_model: expected model.safetensors, found \['tokenizer"):
        load_toto(inputs["no_model"])
    with pytest.raises(ValueError, match="expected a complete safetensors file at .*cut_weights/model.safetensors"):
        load_toto(inputs["cut_weights"])
    with pytest.raises(ValueError, match="expected JSON in .*cut_json/config.json, found a file that does not parse"):
        read_config(inputs["cut_json"])
    with pytest.raises(ValueError, match="expected kind 'toto', found 'tokenizer'"):
        load_toto(inputs["tokenizer"])
    with pytest.raises(ValueError, match="expected kind 'tokenizer' or 'toto', found 'toto-bc-policy'"):
        policy = save_checkpoint(inputs["root"] / "policy_kind", "toto-bc-policy", {}, {})
        load_tokenizer(policy)
    with pytest.raises(ValueError, match="expected a train state"):
        load_train_state(inputs["toto"])
    with pytest.raises(ValueError, match="checkpoint kind: expected one or more of"):
        read_checkpoint(inputs["toto"], "onnx")


def test_typed_configs_name_the_key_and_the_type():
    from pretrain.trainer import TrainConfig
    from toto_robot.deploy import LoopConfig

    with pytest.raises(ValueError, match="LoopConfig.n_steps: expected an integer, found 2.5"):
        LoopConfig(n_steps=2.5)
    with pytest.raises(ValueError, match="TrainConfig.compile: expected true or false, found 'yes'"):
        TrainConfig(compile="yes")
    with pytest.raises(ValueError, match=r"train: expected keys among \[.*\], found unknown key 'stpes'"):
        build(TrainConfig, {"stpes": 3}, "train")
    assert build(TrainConfig, {"steps": 3}, "train").steps == 3
    check_value("x", [[1, 2]], list[list[int]])
    with pytest.raises(ValueError, match=r"x: expected a list \(a list \(an integer each\) each\), found \[\[1, 'a'\]\]"):
        check_value("x", [[1, "a"]], list[list[int]])


def test_a_killed_save_leaves_nothing_once_the_next_save_runs(inputs, tmp_path):
    tok, model = tiny_models(max_frames=8)
    path = save_toto(tmp_path / "checkpoint", tok, model)
    (tmp_path / ".checkpoint.tmp-abc").mkdir()  # a save killed while writing
    (tmp_path / ".checkpoint.tmp-abc" / "model.safetensors").write_bytes(b"partial")
    save_toto(path, tok, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    os.replace(path, tmp_path / ".checkpoint.old-123")  # killed between the two renames: the old one goes back
    from toto_robot.checkpoint import clean_leftovers

    clean_leftovers(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"] and load_toto(path)[2]["kind"] == "toto"


def test_tokenizer_training_runs_short_schedules(inputs, tmp_path):
    """20 steps used to end in OneCycleLR's ZeroDivisionError (a warmup of 0.05 * 20 = 1 step)."""
    from pretrain.data import VideoSource
    from pretrain.tokenizer_training import train_tokenizer
    from toto_robot.tokenizer import tokenizer_preset

    src = VideoSource("v", inputs["videos"], size=32, clip_frames=4, stride=1)
    cfg = tokenizer_preset("tiny", image_size=32, channels=8, codebook_size=16, embed_dim=8)
    for steps in (1, 20):
        res = train_tokenizer([src], cfg, tmp_path / f"tok{steps}", steps=steps, batch_size=2, buffer_frames=8,
                              log_every=100, progress=False)
        assert res["steps"] == steps and np.isfinite(res["psnr_last"])


def test_resuming_with_another_model_names_both(tmp_path):
    from pretrain.trainer import TrainConfig, pretrain
    from tests.pretrain.helpers import make_shards, square_videos

    shards = make_shards(tmp_path, videos=square_videos(tmp_path / "videos", n=2, frames=12, size=32))
    small = {"batch_size": 2, "peak_tflops": 1.0, "progress": False, "tensorboard": False, "eval_clips": 2}
    pretrain(shards, {"preset": "tiny"}, TrainConfig(steps=1, **small), tmp_path / "run")
    before = snapshot(tmp_path / "run")
    with pytest.raises(ValueError, match=r"checkpoint at .*run/checkpoint was trained with model config "
                                         r"\{.*'d_model': \d+.*\}, this run has \{.*'d_model': \d+"):
        pretrain(shards, {"preset": "tiny", "d_model": 32, "n_heads": 2}, TrainConfig(steps=2, **small), tmp_path / "run")
    assert snapshot(tmp_path / "run") == before


# ------------------------------------------------------------------ real exit statuses (fresh interpreters)
def test_a_bad_override_exits_2_in_a_fresh_interpreter(tmp_path):
    out = run_command("deploy", "foo=1", cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "toto-deploy: error: override 'foo=1': expected a key of configs/deploy.yaml, found no key 'foo' "
        "(to add a new key: +foo=1)")
    assert "Traceback" not in out.stderr and list(tmp_path.iterdir()) == []


def test_hydra_full_error_shows_the_traceback_and_keeps_status_2(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    code = ("import sys; from toto_robot.commands.pretrain import main; "
            f"sys.argv[1:] = ['work_dir={tmp_path}', 'train.steps=abc']; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
                         check=False)
    assert out.returncode == 2, out.stderr
    assert "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "toto-pretrain: error: TrainConfig.steps: expected an integer, found 'abc'"


def test_convert_exits_2_in_a_fresh_interpreter(inputs, tmp_path):
    out = subprocess.run([sys.executable, "-m", "toto_robot.commands.convert", "import", str(inputs["no_data"]),
                          str(tmp_path / "s.zarr")], capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("toto-convert: error: ") and "found no such directory" in out.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_bug_exits_1_with_its_traceback(tmp_path):
    code = ("import sys; from toto_robot.commands.entry import entry_point; "
            "main = entry_point('test', 'collect', lambda cfg: {}['bug']); main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         check=False)
    assert out.returncode == 1 and "Traceback" in out.stderr and "KeyError: 'bug'" in out.stderr
