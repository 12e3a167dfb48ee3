"""bench/gpu_check.sh, the script a GPU session runs in one go, run here on the CPU with small settings: every
step's wiring (the commands, their overrides, torchrun, the record it writes) is checked before a GPU is lent."""

import json
import os
import subprocess
import sys

import pytest

from tests.pretrain.helpers import REPO


@pytest.mark.slow
def test_gpu_check_script_runs_every_step_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": sys.executable, "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_MODEL": "tiny",
           "GPU_CHECK_BATCH": "2", "GPU_CHECK_STEPS": "4", "GPU_CHECK_STREAM_MODELS": "tiny", "GIT_COMMIT": "test"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    log = (tmp_path / "out" / "gpu_check.log").read_text() if (tmp_path / "out" / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + log[-3000:]
    record = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert record["all_passed"] and record["git_commit"] == "test"
    assert set(record["steps"]) == {"gpu_tests", "tokenizer", "tokenize", "pretrain_bf16", "pretrain_bf16_compile",
                                    "torchrun_ddp", "torchrun_fsdp", "streaming_tiny"}
    assert set(record["pretrain"]) == {"eager", "compile", "ddp", "fsdp"}
    for run in record["pretrain"].values():
        assert run["tokens_per_s"] > 0 and run["world_size"] == 1
    assert record["streaming"]["tiny"]["streaming_ms"] > 0
