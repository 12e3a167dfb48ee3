import json
import subprocess
from pathlib import Path

import pytest

from tests.commands import run_command

SMALLEST = ["collect.n_episodes=2", "collect.n_workers=1", "collect.horizon=60", "tokenizer_train.steps=3",
            "tokenizer_train.batch_size=2", "pretrain.steps=3", "pretrain.batch_size=2", "pretrain.clip_frames=4",
            "pretrain.frame_stride=4", "bc.steps=4", "bc.batch_size=8", "bc.eval_every=4", "eval.n_episodes=1",
            "eval.n_videos=1", "policy.encoder_window=2"]


def _demo(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_command("demo", f"out_dir={out}", *SMALLEST, *overrides, timeout=900)


@pytest.mark.slow
@pytest.mark.render
def test_demo_smallest_settings_writes_report_and_reuses_stages(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-3000:]
    for f in ("summary.md", "metrics.json", "losses.png", "tokenizer_reconstructions.png",
              "pretrain/checkpoint/config.json", "pretrain/checkpoint/model.safetensors",
              "bc_toto_mlp/best/config.json", "bc_toto_mlp/best/policy.safetensors"):
        assert (out / f).is_file(), f
    assert list((out / "videos").glob("toto_mlp_*.mp4"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["encoder"]["stream_vs_full_max_abs_diff"] < 1e-4
    assert metrics["collect"]["episodes"] == 2
    assert 0.0 <= metrics["policies"][0]["success_rate"] <= 1.0
    assert "| toto_mlp |" in (out / "summary.md").read_text()
    assert "report:" in first.stdout
    again = _demo(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing finished stage" in again.stdout and "] running" not in again.stdout
    changed = _demo(out, "bc.steps=5", "bc.eval_every=5")
    assert "[pretrain] reusing" in changed.stdout and "[bc_toto_mlp] running" in changed.stdout


def test_demo_rejects_a_bad_override(tmp_path):
    bad = _demo(tmp_path / "demo", "model.preset=huge")
    assert bad.returncode != 0
    assert "expected one of" in bad.stderr and "huge" in bad.stderr
