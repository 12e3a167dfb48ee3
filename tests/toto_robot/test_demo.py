import json
import subprocess
import sys
from pathlib import Path

import pytest

SMALLEST = ["data.clips=3", "data.frames=3", "tokenizer_train.steps=3", "tokenizer_train.batch_size=2",
            "pretrain.steps=3", "pretrain.batch_size=2", "encoder.window=2"]


def _demo(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from toto_robot.commands.demo import main; main()", f"out_dir={out}",
           *SMALLEST, *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_smallest_settings_writes_report_and_reuses_stages(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-2000:]
    for f in ("summary.md", "metrics.json", "losses.png", "tokenizer_reconstructions.png",
              "pretrain/checkpoint/config.json", "pretrain/checkpoint/model.safetensors"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["encoder"]["stream_vs_full_max_abs_diff"] < 1e-4
    assert "report:" in first.stdout
    again = _demo(out)
    assert again.returncode == 0
    assert "reusing finished stage" in again.stdout and "[pretrain] running" not in again.stdout
    changed = _demo(out, "pretrain.steps=4")
    assert "[tokenizer] reusing" in changed.stdout and "[pretrain] running" in changed.stdout


def test_demo_rejects_a_bad_override(tmp_path):
    bad = _demo(tmp_path / "demo", "model.preset=huge")
    assert bad.returncode != 0
    assert "expected one of" in bad.stderr and "huge" in bad.stderr
