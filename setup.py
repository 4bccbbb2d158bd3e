"""What pyproject.toml cannot say: the packages, with the top-level assets/ directory (the source of the
lab recipe) installed as the package kbpg_tui.assets, read with importlib.resources."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["kbpg_tui", "kbpg_tui.*"]) + ["kbpg_tui.assets", "kbpg_tui.assets.lab"],
    package_dir={"kbpg_tui.assets": "assets"},
)
