"""bench/bench_deploy.py: its FLOP count includes the attention kernel SDPA runs on the CPU, and a short run of the
tiny preset writes a record with every variant, the floor and the summary lines the README is read from."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.pretrain.helpers import REPO


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_deploy", REPO / "bench" / "bench_deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gflop_counts_matmuls_and_cpu_attention():
    gflop = bench_module().gflop
    a, b = torch.randn(8, 16), torch.randn(16, 32)
    assert gflop(lambda: a @ b) == pytest.approx(2 * 8 * 16 * 32 / 1e9)
    q, k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 24, 4), torch.randn(1, 2, 24, 4)
    # two matmuls per head: scores (8 x 4 @ 4 x 24) and the weighted sum (8 x 24 @ 24 x 4)
    assert gflop(lambda: F.scaled_dot_product_attention(q, k, v)) == pytest.approx(2 * 2 * (2 * 8 * 24 * 4) / 1e9)


@pytest.mark.slow
def test_bench_deploy_tiny_record(tmp_path):
    out = tmp_path / "deploy.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_deploy.py"), "--presets", "tiny", "--window",
                           "2", "--probe", "3", "--steps", "3", "--rate", "50", "--no-threads-section", "--out",
                           str(out)], check=False, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    variants = ("eager", "fast", "fast_bf16", "distilled", "distilled_bf16")
    assert set(record["figures"]) == {f"tiny/{n}cam/{v}" for n in (1, 2) for v in variants}
    for figure in record["figures"].values():
        assert 0 < figure["p50_ms"] <= figure["p99_ms"]
    assert record["figures"]["tiny/1cam/fast"]["token_agreement"] == 1.0  # onnx: the same tokens as eager
    floor = record["floor"]["tiny"]
    assert 0 < floor["light_encoder_gflop"] < floor["teacher_tokenizer_gflop"]
    assert floor["transformer_step_gflop"] > 0 and floor["matmul_gflops"] > 0
    assert floor["floor_ms"]["distilled"] < floor["floor_ms"]["fast"]
    assert record["summary"][-1].startswith("tiny 1 camera: fast p50 ")
    assert "tiny floor: transformer step" in proc.stdout
