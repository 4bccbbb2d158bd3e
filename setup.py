"""What pyproject.toml cannot say: the packages, with the top-level assets/ directory (the source of the
lab recipe, and the restore-drill script step 06 installs on the backup host) installed as the package
kbpg_tui.assets, read with importlib.resources."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["kbpg_tui", "kbpg_tui.*"]) + ["kbpg_tui.assets", "kbpg_tui.assets.lab",
                                                                  "kbpg_tui.assets.backup"],
    package_dir={"kbpg_tui.assets": "assets"},
)
