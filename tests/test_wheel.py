"""kbpg as an operator installs it: a built wheel in a fresh virtualenv outside the checkout.

The wheel is built from a copy of the source tree, installed with its dependencies into a new
venv in a temporary directory, and run from a directory that is not the checkout, with no
PYTHONPATH: whatever kbpg reads at run time (the wizard's stylesheet, the lab recipe) must come
from the installed package. About a minute, most of it pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from kbpg_tui import __version__
from kbpg_tui.core.lab import image

from .conftest import REPO, run_kbpg

# Top-level names of the checkout that are not part of the package (never copied to the build).
NOT_SOURCE = {".git", ".venv", "build", "dist", "lab-work", "work", ".pytest_cache", "screens", "tests"}


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of an operator's shell: nothing pointing into the checkout."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO)))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


class Installed:
    def __init__(self, root: Path, wheel: Path, venv: Path, cwd: Path, env: dict[str, str]):
        self.root, self.wheel, self.venv, self.cwd, self.env = root, wheel, venv, cwd, env

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run(list(command), self.cwd, self.env, timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(REPO.resolve()), "the wheel test must run outside the checkout"
    source = root / "src"
    shutil.copytree(
        REPO, source,
        ignore=lambda directory, names: [
            name for name in names
            if (Path(directory) == REPO and name in NOT_SOURCE)
            or name == "__pycache__" or name.endswith((".egg-info", ".pyc"))
        ],
    )
    env = _clean_env(root)
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)], root, env, timeout=300)
    wheels = list(dist.glob("kbpg-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])], root, env, timeout=600)
    cwd = root / "elsewhere"
    cwd.mkdir()
    return Installed(root, wheels[0], venv, cwd, env)


def test_the_wheel_carries_every_file_of_the_package_and_the_lab_recipe(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    source = installed.root / "src"  # the copy the wheel was built from (the checkout may change meanwhile)
    expected = {
        path.relative_to(source).as_posix()
        for path in (source / "kbpg_tui").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    expected |= {f"kbpg_tui/assets/lab/{path.name}" for path in (source / "assets" / "lab").iterdir() if path.is_file()}
    expected |= {f"kbpg_tui/assets/backup/{path.name}" for path in (source / "assets" / "backup").iterdir()
                 if path.is_file()}
    assert "kbpg_tui/ui/kbpg.tcss" in expected and "kbpg_tui/assets/lab/base-packages.txt" in expected
    assert "kbpg_tui/assets/backup/restore-drill" in expected
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"


def test_installed_kbpg_runs_from_the_venv_not_the_checkout(installed: Installed) -> None:
    where = installed.run(installed.python, "-c", "import kbpg_tui; print(kbpg_tui.__file__)").stdout.strip()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve()), where


def test_version_from_the_checkout() -> None:
    result = run_kbpg("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kbpg {__version__}"


def test_version(installed: Installed) -> None:
    result = installed.run(str(installed.venv / "bin" / "kbpg"), "--version")
    assert result.stdout.strip() == f"kbpg {__version__}"
    metadata = installed.run(installed.python, "-c", "import importlib.metadata as m; print(m.version('kbpg'))")
    assert metadata.stdout.strip() == __version__


def test_the_lab_recipe_is_read_through_the_installed_package(installed: Installed) -> None:
    code = textwrap.dedent("""
        from kbpg_tui.core.lab import image
        from kbpg_tui.core.lab.util import read_list_file
        assets = image.assets_dir()
        print(str(assets))
        print(",".join(read_list_file(assets / "base-packages.txt")))
        print(image.recipe_key())
    """)
    where, base_packages, key = installed.run(installed.python, "-c", code).stdout.splitlines()
    assert Path(where).resolve().is_relative_to(installed.venv.resolve()), where
    assert "systemd" in base_packages.split(",")
    # Same recipe files, same hash: the installed image cache key is the checkout's.
    assert key == image.recipe_key()


def test_the_restore_drill_script_is_read_through_the_installed_package(installed: Installed) -> None:
    code = "from kbpg_tui.core.ops import restore_drill as rd; print(rd.drill_script_text().splitlines()[0])"
    assert installed.run(installed.python, "-c", code).stdout.strip() == "#!/bin/bash"


def test_lab_status_runs(installed: Installed) -> None:
    result = installed.run(str(installed.venv / "bin" / "kbpg"), "--workdir", str(installed.cwd), "lab", "status", "--json")
    assert '"state"' in result.stdout, result.stdout


WIZARD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from kbpg_tui.ui.app import KbpgApp
    from kbpg_tui.ui.screens.welcome import WelcomeScreen

    async def main():
        app = KbpgApp(Path(sys.argv[1]))
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, WelcomeScreen), app.screen
            menu = app.screen.query_one("#menu")
            # kbpg.tcss: `#menu { padding: 1 2 }`, `#menu Button { width: 100% }`
            assert tuple(menu.styles.padding) == (1, 2, 1, 2), menu.styles.padding
            widths = {button.region.width for button in menu.query("Button")}
            assert widths == {96}, widths
            print("welcome", app.css_path)
            await pilot.press("q")
        return app.return_code

    sys.exit(asyncio.run(main()) or 0)
""")


def test_the_wizard_starts_with_its_stylesheet(installed: Installed) -> None:
    workdir = installed.root / "workdir"
    workdir.mkdir()
    result = installed.run(installed.python, "-c", WIZARD, str(workdir), timeout=120)
    assert result.stdout.startswith("welcome"), result.stdout + result.stderr
    assert str(installed.venv.resolve()) in result.stdout
