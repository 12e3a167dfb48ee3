"""A plain (non-editable) install of the project carries its hydra configs: the commands run from anywhere."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "setup.py", "README.md", "toto_robot", "envs", "policies", "pretrain", "configs")
# This venv's editable install resolves the project's imports through a meta-path finder, ahead of any
# sys.path entry: the child drops it, so every import comes from the install under test.
PRELUDE = ("import sys; sys.meta_path = [f for f in sys.meta_path if '__editable__' not in "
           "getattr(f, '__module__', '') and '__editable__' not in getattr(f, '__name__', '')]; ")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed with pip --target from a copy of its sources (no dependencies: they are here)."""
    src, target = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("site")
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(src)], check=True, capture_output=True, timeout=120)
    return target


def run_installed(installed: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", PRELUDE + code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180, check=False)


def test_installed_commands_find_their_configs(installed, tmp_path):
    probe = run_installed(installed, "import toto_robot, toto_robot.config as c; print(toto_robot.__file__); "
                                     "print(c.CONFIG_DIR)", tmp_path)
    assert probe.returncode == 0, probe.stderr
    module, config_dir = probe.stdout.split()
    assert module.startswith(str(installed)) and config_dir.startswith(str(installed))
    assert (Path(config_dir) / "policy" / "toto_mlp.yaml").is_file()

    demo = run_installed(installed, "sys.argv = ['toto-demo', '--help']; "
                                    "from toto_robot.commands.demo import main; main()", tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "toto-demo" in demo.stdout or "demo is powered by Hydra" in demo.stdout, demo.stdout

    store = tmp_path / "lift.zarr"
    collect = run_installed(installed, f"sys.argv = ['toto-collect', 'n_episodes=1', 'output={store}', "
                                       "'progress=false']; from toto_robot.commands.collect import main; main()",
                            tmp_path)
    assert collect.returncode == 0, collect.stderr
    assert (store / "zarr.json").is_file() or (store / ".zgroup").is_file()
