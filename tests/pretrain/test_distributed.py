"""Exact resume after SIGKILL, and 2-process DDP / FSDP2 runs on gloo, through the real command line."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.pretrain.helpers import REPO, make_shards
from toto_robot.encoder import load_toto

TINY = ["+model.d_model=32", "+model.n_heads=2", "+model.n_layers=2", "+model.ffn_hidden=64", "train.batch_size=4",
        "train.peak_tflops=1", "train.progress=false", "train.held_out=0.25", "train.warmup_steps=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return tmp, make_shards(tmp)


def _args(data, out, *extra):
    tmp, shards = data
    return ["data=folder", f"data.sources.videos.root={tmp / 'videos'}", f"shards={shards}", f"out_dir={out}",
            *TINY, *extra]


def _rows(out) -> dict[int, dict]:
    """Last logged row per step (a resumed run logs the steps after its checkpoint again)."""
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["step"]] = r
    return rows


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.py: tiny models, shared cores


def _run(args, timeout=300):
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(data, tmp_path):
    steps = ["train.steps=100", "train.ckpt_every=10", "train.eval_every=50", "train.log_every=50"]
    cmd = [sys.executable, "-m", "toto_robot.commands.pretrain"]
    _run(cmd + _args(data, tmp_path / "straight", *steps))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + _args(data, killed, *steps), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and max(_rows(killed), default=0) >= 25:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = json.loads((killed / "checkpoint" / "config.json").read_text())["train"]["step"]
    assert 20 <= step_at_kill < 100
    resumed = _run(cmd + _args(data, killed, *steps))
    assert f"resuming from {killed / 'checkpoint'} at step {step_at_kill}" in resumed.stdout
    a, b = _rows(tmp_path / "straight"), _rows(killed)
    assert sorted(a) == sorted(b) == list(range(1, 101))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]  # bit for bit
    assert [a[s]["lr"] for s in a] == [b[s]["lr"] for s in a]
    assert a[100]["held_out_loss"] == b[100]["held_out_loss"] and a[50]["held_out_loss"] == b[50]["held_out_loss"]


def _torchrun(data, out, strategy):
    cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "toto_robot.commands.pretrain"]
    return _run(cmd + _args(data, out, "train.steps=12", "train.ckpt_every=6", "train.eval_every=12",
                            "train.log_every=6", "train.grad_accum=2", f"train.strategy={strategy}"))


@pytest.mark.slow
def test_ddp_and_fsdp2_on_two_gloo_processes_agree(data, tmp_path):
    ddp = _torchrun(data, tmp_path / "ddp", "ddp")
    _torchrun(data, tmp_path / "fsdp", "fsdp")
    assert ddp.stdout.count("toto-pretrain finished") == 1  # only rank 0 reports
    a, b = _rows(tmp_path / "ddp"), _rows(tmp_path / "fsdp")
    la, lb = np.array([a[s]["loss"] for s in sorted(a)]), np.array([b[s]["loss"] for s in sorted(b)])
    assert len(la) == 12 and la[-1] < la[0]
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-4)  # same data, same init: same training
    for run in ("ddp", "fsdp"):
        config = json.loads((tmp_path / run / "checkpoint" / "config.json").read_text())
        assert config["train"]["data_position"]["world_size"] == 2 and config["train"]["step"] == 12
    _, ma, _ = load_toto(tmp_path / "ddp" / "checkpoint")
    _, mb, _ = load_toto(tmp_path / "fsdp" / "checkpoint")  # FSDP2 shards were gathered into full tensors
    for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
        np.testing.assert_allclose(pa.numpy(), pb.numpy(), atol=1e-4, err_msg=name)
