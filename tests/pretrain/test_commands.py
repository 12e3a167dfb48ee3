"""Command lines end to end on tiny settings, scaling-law fitting, and clear errors on bad input."""

import json
import os
import subprocess

import numpy as np
import pytest

from pretrain.data import VideoSource
from pretrain.scaling import fit_power_law, frontier
from pretrain.shards import load_tokenizer
from pretrain.tokenizer_training import train_tokenizer
from tests.pretrain.helpers import CLIP, REPO, SIZE, STRIDE, command, square_videos

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args):
    return subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)


def test_fit_recovers_a_known_power_law_and_uses_the_frontier():
    c = np.geomspace(1e9, 1e12, 6)
    a, b = fit_power_law(c, 7.32 * c**-0.0378)
    assert a == pytest.approx(7.32, rel=1e-6) and b == pytest.approx(-0.0378, abs=1e-9)
    assert frontier(np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 4.0, 4.5])).tolist() == [0, 2]
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_power_law([1.0], [2.0])


def test_tokenizer_training_logs_psnr_and_usage(tmp_path):
    src = VideoSource("v", square_videos(tmp_path / "videos", n=2, frames=12, size=32), size=SIZE,
                      clip_frames=CLIP, stride=STRIDE)
    from toto_robot.tokenizer import tokenizer_preset

    cfg = tokenizer_preset("tiny", image_size=SIZE, channels=8, codebook_size=32, embed_dim=8)
    res = train_tokenizer([src], cfg, tmp_path / "tok", steps=12, batch_size=4, buffer_frames=16, log_every=6,
                          progress=False)
    rows = [json.loads(r) for r in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {"psnr", "codebook_usage", "loss"} <= set(rows[0])
    assert rows[-1]["psnr"] > rows[0]["psnr"]
    assert 0 < res["codebook_usage_check"] <= 1 and (tmp_path / "tok" / "reconstructions.png").is_file()
    assert load_tokenizer(res["checkpoint"]).cfg == cfg


@pytest.mark.slow
def test_the_three_commands_on_a_folder_with_a_corrupt_file(tmp_path):
    videos = square_videos(tmp_path / "videos", n=3, frames=20, size=32)
    (videos / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3 not really webm")
    common = ["data=folder", f"data.sources.videos.root={videos}", f"work_dir={tmp_path / 'work'}",
              f"data.resolution={SIZE}", f"data.clip_frames={CLIP}", f"data.frame_stride={STRIDE}"]
    tok = _run(*command("train_tokenizer"), *common, "tokenizer_train.steps=3", "tokenizer_train.batch_size=4",
               "tokenizer_train.progress=false", "+tokenizer.channels=8", "tokenizer.codebook_size=32")
    assert tok.returncode == 0, tok.stderr[-2000:]
    assert "PSNR" in tok.stdout and f"checkpoint: {tmp_path / 'work' / 'tokenizer' / 'checkpoint'}" in tok.stdout
    shards = _run(*command("tokenize"), *common, "progress=false")
    assert shards.returncode == 0, shards.stderr[-2000:]
    assert "1 of 4 items skipped" in shards.stdout and "broken.webm" in shards.stderr
    assert f"shards: {tmp_path / 'work' / 'tokens.zarr'}" in shards.stdout
    strict = _run(*command("tokenize"), *common, "data.strict=true", f"shards={tmp_path / 'strict.zarr'}")
    assert strict.returncode != 0 and "broken.webm" in strict.stderr and "strict" in strict.stderr
    run = _run(*command("pretrain"), *common, "train.steps=4", "train.batch_size=2", "train.peak_tflops=1",
               "train.progress=false", "train.held_out=0.34")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "held-out loss" in run.stdout and "MFU" in run.stdout
    assert list((tmp_path / "work" / "run" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("module, overrides, message", [
    ("tokenize", ["data=folder", "data.sources.videos.root=/nonexistent/videos"],
     "expected a directory of videos at /nonexistent/videos, found nothing"),
    ("tokenize", ["tokenizer_checkpoint=/nonexistent/tok"],
     "checkpoint /nonexistent/tok: expected /nonexistent/tok/config.json, found no such file"),
    ("pretrain", ["shards=/nonexistent/tokens.zarr"], "expected index.json in /nonexistent/tokens.zarr"),
    ("pretrain", ["train.strategy=zero3"], "expected one of ('none', 'ddp', 'fsdp'), got 'zero3'"),
])
def test_bad_input_is_a_clear_error(module, overrides, message, tmp_path):
    proc = _run(*command(module), f"work_dir={tmp_path}", *overrides)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_scaling_sweep_fits_every_run_and_writes_a_record(tmp_path):
    from tests.pretrain.helpers import make_shards

    shards = make_shards(tmp_path)
    record = tmp_path / "results" / "scaling.json"
    sizes = "[{n_layers:1,d_model:16,n_heads:2,ffn_hidden:32},{n_layers:2,d_model:32,n_heads:2,ffn_hidden:64}]"
    run = _run(*command("scaling"), "data=folder", f"data.sources.videos.root={tmp_path / 'videos'}",
               f"shards={shards}", f"out_dir={tmp_path / 'sweep'}", f"sizes={sizes}", "token_budgets=[600,1800]",
               "train.batch_size=2", "train.held_out=0.25", f"results={record}")
    assert run.returncode == 0, run.stderr[-2000:]
    fit = json.loads(record.read_text())
    assert [r["name"] for r in fit["runs"]] == ["L1-d16-tok600", "L1-d16-tok1800", "L2-d32-tok600", "L2-d32-tok1800"]
    assert all(r["tokens"] >= r["token_budget"] and np.isfinite(r["held_out_loss"]) for r in fit["runs"])
    assert np.isfinite(fit["b"]) and fit["paper"]["b"] == -0.0378 and fit["command"].startswith("scaling")
    assert record.with_suffix(".png").stat().st_size > 0 and f"exponent {fit['b']:.4f}" in run.stdout
