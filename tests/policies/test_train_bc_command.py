import subprocess
import sys


def _run(*overrides):
    cmd = [sys.executable, "-c", "from toto_robot.commands.train_bc import main; main()", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_missing_store_is_a_clear_error(tmp_path):
    res = _run(f"store={tmp_path / 'none.zarr'}")
    assert res.returncode == 1
    assert "expected a trajectory store" in res.stderr and "Traceback" not in res.stderr


def test_store_without_env_is_a_clear_error(tmp_path):
    from tests.policies.test_bc import make_store

    path = make_store(tmp_path / "s.zarr", n_episodes=1, steps=3)
    res = _run(f"store={path}")
    assert res.returncode == 1
    assert "no 'env' attribute" in res.stderr
