"""What pyproject.toml cannot say: the hydra configs (the top-level configs/ folder, their one source) ship
inside the installed project as the data-only package `toto_robot_configs`, one subpackage per config group
(toto_robot/config.py CONFIG_DIR finds them), so a non-editable install has them too. Everything else is in
pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

CONFIGS = "toto_robot_configs"
groups = [f"{CONFIGS}.{d.name}" for d in sorted(Path(__file__).parent.joinpath("configs").iterdir()) if d.is_dir()]

setup(
    packages=[*find_packages(include=["toto_robot*", "envs*", "policies*", "pretrain*"]), CONFIGS, *groups],
    package_dir={CONFIGS: "configs"},
    package_data={package: ["*.yaml"] for package in (CONFIGS, *groups)},
)
