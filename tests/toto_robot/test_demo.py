import json
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from pretrain.data import ZarrSource
from pretrain.shards import load_tokenizer, tokenize_sources
from pretrain.tokenizer_training import train_tokenizer
from pretrain.trainer import TrainConfig, pretrain
from tests.commands import run_command
from toto_robot.checkpoint import load_train_state, read_config
from toto_robot.config import CONFIG_DIR, tokenizer_config
from toto_robot.encoder import TotoEncoder
from toto_robot.metrics_log import read_metrics

SMALLEST = ["collect.n_episodes=2", "collect.n_workers=1", "collect.horizon=60", "tokenizer_train.steps=3",
            "tokenizer_train.batch_size=2", "pretrain.steps=3", "pretrain.batch_size=2", "pretrain.clip_frames=4",
            "pretrain.frame_stride=4", "bc.steps=4", "bc.batch_size=8", "bc.eval_every=4", "eval.n_episodes=1",
            "eval.n_videos=1", "policy.encoder_window=2"]


def _demo(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_command("demo", f"out_dir={out}", *SMALLEST, *overrides, timeout=900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, _demo(out)


@pytest.mark.slow
@pytest.mark.render
def test_demo_smallest_settings_writes_report_and_reuses_stages(demo_run):
    out, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    for f in ("summary.md", "metrics.json", "losses.png", "tokenizer_reconstructions.png",
              "pretrain/checkpoint/config.json", "pretrain/checkpoint/model.safetensors",
              "bc_toto_flat_multi/best/config.json", "bc_toto_flat_multi/best/policy.safetensors"):
        assert (out / f).is_file(), f
    assert list((out / "videos").glob("toto_flat_multi_*.mp4"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["encoder"]["stream_vs_full_max_abs_diff"] < 1e-4
    assert metrics["collect"]["episodes"] == 2
    assert 0.0 <= metrics["policies"][0]["success_rate"] <= 1.0
    assert "| toto_flat_multi |" in (out / "summary.md").read_text()
    assert "report:" in first.stdout
    again = _demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing finished stage" in again.stdout and "] running" not in again.stdout
    changed = _demo(out, "bc.steps=5", "bc.eval_every=5")
    assert "[pretrain] reusing" in changed.stdout and "[bc_toto_flat_multi] running" in changed.stdout


def _layout(ckpt: Path) -> tuple[str, list[str], list[str], dict]:
    """What a checkpoint is made of: kind, config keys (and train-section keys), tensor names and shapes."""
    config = read_config(ckpt)
    tensors = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        tensors |= {f"{f.stem}/{k}": tuple(v.shape) for k, v in load_file(f).items()}
    return config["kind"], sorted(config), sorted(config["train"]), tensors


@pytest.mark.slow
@pytest.mark.render
def test_demo_writes_the_checkpoint_the_pretrain_commands_write(demo_run, tmp_path):
    out, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    demo_ckpt = out / "pretrain" / "checkpoint"
    # The commands' stage functions on the demo's store, at the demo's sizes (two steps each).
    source = ZarrSource("robot", out / "collect" / "Lift.zarr", size=64, clip_frames=4, stride=4)
    tok_cfg = tokenizer_config(dict(OmegaConf.load(Path(CONFIG_DIR) / "tokenizer" / "tiny.yaml")))
    tok = train_tokenizer([source], tok_cfg, tmp_path / "tokenizer", steps=2, batch_size=2, progress=False)
    tokenize_sources([source], load_tokenizer(tok["checkpoint"]), tmp_path / "tokens.zarr",
                     tokenizer_path=tok["checkpoint"], progress=False)
    model_node = dict(OmegaConf.load(Path(CONFIG_DIR) / "model" / "tiny.yaml"))
    small = {"batch_size": 2, "peak_tflops": 1.0, "progress": False, "tensorboard": False}
    cmd = pretrain(tmp_path / "tokens.zarr", model_node, TrainConfig(steps=2, **small), tmp_path / "run")
    assert _layout(demo_ckpt) == _layout(Path(cmd["checkpoint"]))
    assert read_config(demo_ckpt)["corpus"] == "demonstrations:Lift"

    enc = TotoEncoder.from_pretrained(demo_ckpt)
    assert enc.tokenizer.cfg == tok_cfg
    assert load_train_state(demo_ckpt).step == 3  # pretrain.steps=3 in SMALLEST
    resumed = tmp_path / "resumed"  # the trainer's resume path continues the demo's run
    shutil.copytree(out / "pretrain" / "checkpoint", resumed / "checkpoint")
    pretrain(out / "tokenize" / "tokens.zarr", model_node, TrainConfig(steps=4, **small), resumed)
    assert [r["step"] for r in read_metrics(resumed)] == [4]
    assert load_train_state(resumed / "checkpoint").step == 4


def test_demo_rejects_a_bad_override(tmp_path):
    bad = _demo(tmp_path / "demo", "model.preset=huge")
    assert bad.returncode == 2
    assert "expected one of" in bad.stderr and "huge" in bad.stderr
