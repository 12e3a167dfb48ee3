"""The tokenization and pretraining-memory benchmarks run end to end at tiny sizes and their records say what
they measured (the same tokens everywhere; the large shard set read on demand, not loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.pretrain.helpers import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], check=False, capture_output=True,
                          text=True, timeout=600, cwd=REPO, env=ENV)


@pytest.mark.slow
def test_bench_tokenize_record(tmp_path):
    out = tmp_path / "tokenize.json"
    proc = run_bench("bench_tokenize.py", "--items", "6", "--frames", "16", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["same_tokens"] and all(record["decode_workers"]["same_tokens"].values())
    assert set(record["decode_workers"]["clips_per_s"]) == {"0", "1", "2", "2_one_shard"}
    disk = record["bytes_per_token_on_disk"]
    assert disk["tokens"] == record["clips"] * 8 * 4 * 4  # 8-frame clips of 4x4 tokens at 32 px
    assert 0 < disk["chunk_bytes_per_token"] < disk["store_bytes_per_token"]
    assert disk["chunk_files"] >= 1


@pytest.mark.slow
def test_bench_pretrain_memory_record(tmp_path):
    out = tmp_path / "memory.json"
    proc = run_bench("bench_pretrain_memory.py", "--videos", "3", "--frames", "8", "--factor", "3", "--steps", "2",
                     "--batch", "1", "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["shard_raw_bytes"]["large"] == 3 * record["shard_raw_bytes"]["small"] == 3 * record["in_memory_bytes"]
    loaded = {label: run["loaded"] for label, run in record["runs"].items()}
    assert loaded == {"fits in memory": True, "3x, read on demand": False,
                      "3x, read on demand, shuffle_window 4": False, "3x, loaded (context)": True}
    for run in record["runs"].values():
        assert run["tokens_per_s_median"] > 0 and run["peak_rss_mb_median"] > 0
