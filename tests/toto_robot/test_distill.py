"""The light deployment encoder and its distillation (toto_robot/distill.py, toto-distill-tokenizer)."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from pretrain.data import VideoSource
from pretrain.tokenizer_training import train_tokenizer
from tests.pretrain.helpers import REPO, square_videos
from toto_robot.checkpoint import load_tokenizer, save_tokenizer
from toto_robot.distill import distill_tokenizer, evaluate, split_items, student_of
from toto_robot.synthetic import moving_squares
from toto_robot.tokenizer import Tokenizer, TokenizerConfig, tokenizer_preset


def _macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the convolutions of `module` on `x`."""
    total = 0

    def hook(m, _inp, out):
        nonlocal total
        total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("preset, channels", [("tiny", 16), ("small", 32)])
def test_light_encoder_gives_the_same_grid_for_a_fraction_of_the_work(preset, channels):
    teacher = Tokenizer(tokenizer_preset(preset)).eval()
    student = student_of(teacher, channels)
    size = teacher.cfg.image_size
    x = torch.zeros(1, 3, size, size)
    assert student.encoder(x).shape == teacher.encoder(x).shape  # (1, code_dim, grid, grid)
    assert _macs(student.encoder, x) * 3 < _macs(teacher.encoder, x)
    ids = student.encode(torch.from_numpy(moving_squares(1, 2, size=size)))
    assert ids.shape == (1, 2, teacher.cfg.grid, teacher.cfg.grid)
    assert torch.equal(student.quantizer.codebook, teacher.quantizer.codebook)
    for a, b in zip(student.decoder.state_dict().values(), teacher.decoder.state_dict().values()):
        assert torch.equal(a, b)


def test_light_tokenizer_checkpoint_round_trip(tmp_path):
    tok = student_of(Tokenizer(tokenizer_preset("tiny")).eval(), 16)
    save_tokenizer(tmp_path / "light", tok)
    loaded = load_tokenizer(tmp_path / "light")
    assert loaded.cfg.encoder == "light" and loaded.cfg.light_channels == 16
    frames = torch.from_numpy(moving_squares(1, 2))
    assert torch.equal(loaded.encode(frames), tok.encode(frames))


def test_tokenizer_config_rejects_an_unknown_encoder():
    with pytest.raises(ValueError, match="TokenizerConfig.encoder: expected one of"):
        TokenizerConfig(encoder="resnet")
    with pytest.raises(ValueError, match="teacher: expected a tokenizer with the conv encoder"):
        student_of(Tokenizer(replace(tokenizer_preset("tiny"), encoder="light")), 8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return square_videos(tmp_path_factory.mktemp("distill") / "videos", n=6, frames=24, size=64)


@pytest.fixture(scope="module")
def teacher(videos, tmp_path_factory) -> Tokenizer:
    """A tiny tokenizer trained for a few steps on the videos (its codes are those of a trained one: few and
    structured, not a random function's)."""
    source = VideoSource("squares", videos, size=64, clip_frames=4, stride=1)
    out = tmp_path_factory.mktemp("teacher")
    train_tokenizer([source], tokenizer_preset("tiny", codebook_size=64), out, steps=30, batch_size=8,
                    progress=False, log_every=1000)
    return load_tokenizer(out / "checkpoint")


def test_split_items_holds_out_whole_items(videos):
    source = VideoSource("squares", videos, size=64, clip_frames=4, stride=1)
    train, held = split_items(source, 0.3)
    assert train.items() and held.items()
    assert sorted(train.items() + held.items()) == sorted(source.items())
    assert split_items(source, 0.3)[1].items() == held.items()  # fixed by the items' keys


def test_distillation_learns_the_teachers_tokens_on_held_out_items(videos, teacher, tmp_path):
    source = VideoSource("squares", videos, size=64, clip_frames=4, stride=1)
    _, held = split_items(source, 0.2)
    frames = np.concatenate([c for item in held.items() for c in held.clips(item)])
    before = evaluate(teacher, student_of(teacher, 16), frames)["token_agreement"]
    res = distill_tokenizer(teacher, [source], tmp_path / "light", channels=16, steps=150, batch_size=16,
                            held_out=0.2, eval_frames=64, buffer_frames=256, log_every=50, progress=False)
    after = res["held_out"]
    assert after["token_agreement"] > max(0.5, before + 0.2, after["majority_code_agreement"] + 0.2), after
    student = load_tokenizer(tmp_path / "light" / "checkpoint")
    assert student.cfg.encoder == "light"
    assert torch.equal(student.quantizer.codebook, teacher.quantizer.codebook)
    assert evaluate(teacher, student, frames)["token_agreement"] > before + 0.2  # the saved weights learned
    written = json.loads((tmp_path / "light" / "results.json").read_text())
    assert written["held_out"] == after and written["student_encoder_params"] < written["teacher_encoder_params"]


def test_command_distills_and_rejects_a_missing_teacher(videos, teacher, tmp_path):
    teacher_path = tmp_path / "teacher"
    save_tokenizer(teacher_path, teacher)
    base = [sys.executable, "-m", "toto_robot.commands.distill", "data=folder", f"data.sources.videos.root={videos}",
            "data.clip_frames=4", "data.frame_stride=1", f"work_dir={tmp_path}", "distill.steps=5",
            "distill.batch_size=4", "distill.eval_frames=8", "distill.buffer_frames=32", "distill.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([*base, f"teacher={teacher_path}", f"out_dir={tmp_path / 'out'}",
                         f"results={tmp_path / 'record.json'}"], check=False, cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "held-out token agreement" in ok.stdout
    assert load_tokenizer(tmp_path / "out" / "checkpoint").cfg.encoder == "light"
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["kind"] == "distill" and f"teacher={teacher_path}" in record["command"]
    assert 0 <= record["held_out"]["token_agreement"] <= 1 and record["threads"] == 1
    bad = subprocess.run([*base, f"teacher={tmp_path / 'nothing'}"], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "toto-distill-tokenizer: error:" in bad.stderr
    assert str(tmp_path / "nothing") in bad.stderr
