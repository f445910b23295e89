"""A build from source on a machine without libuv stops at once, at CMake's
configure step (before anything is compiled), saying which package to install on
Debian/Ubuntu, Fedora and macOS.

Only CMake's configure step runs here (a few seconds), in a temporary build directory,
with the CMake this venv builds with. libuv is hidden from it by pointing pkg-config
at an empty directory, or by naming a pkg-config that does not exist; the same
command without that gets past libuv, so the message is the absence's doing.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Not an assertion on time: a bound so that a hung cmake fails instead of hanging.
CONFIGURE_TIMEOUT = 50

PACKAGES = (
    "Debian/Ubuntu:  sudo apt-get install libuv1-dev pkg-config",
    "Fedora:         sudo dnf install libuv-devel pkgconf-pkg-config",
    "macOS:          brew install libuv pkg-config",
)


def _configure(tmp_path: Path, *, env_extra=(), args=()) -> subprocess.CompletedProcess:
    cmake = shutil.which("cmake", path=str(BIN)) or shutil.which("cmake")
    if cmake is None:
        pytest.skip("no cmake here (requirements-test.txt installs it in each venv)")
    pybind11_dir = subprocess.run(
        [sys.executable, "-m", "pybind11", "--cmakedir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the venv's ninja
    env.update(env_extra)
    return subprocess.run(
        [cmake, "-S", ROOT, "-B", tmp_path / "build", "-G", "Ninja"]
        + [f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11_dir}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CONFIGURE_TIMEOUT,
    )


def _message(done: subprocess.CompletedProcess) -> str:
    # CMake wraps a message's lines and indents them: compare with whitespace joined.
    return " ".join((done.stdout + done.stderr).split())


def test_configure_finds_libuv_here(tmp_path):
    done = _configure(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fastloop: linking libuv" in done.stdout


@pytest.mark.parametrize("hidden", ["pkg-config finds no libuv", "no pkg-config"])
def test_configure_without_libuv_says_what_to_install(tmp_path, hidden):
    if hidden == "no pkg-config":
        done = _configure(tmp_path, args=["-DPKG_CONFIG_EXECUTABLE=/nonexistent/pkg-config"])
        why = "and no pkg-config was found"
    else:
        empty = tmp_path / "no-pc-files"
        empty.mkdir()
        done = _configure(
            tmp_path,
            env_extra={"PKG_CONFIG_LIBDIR": str(empty), "PKG_CONFIG_PATH": str(empty)},
        )
        why = "and pkg-config found no libuv"
    text = _message(done)
    assert done.returncode != 0, text
    assert "fastloop needs libuv" in text and why in text, text
    for line in PACKAGES:
        assert " ".join(line.split()) in text, line
    # It is the first error, and it comes before anything else is looked for or built.
    assert text.count("CMake Error") == 1, text
    assert "pybind11" not in done.stdout, done.stdout
    assert not list((tmp_path / "build").glob("**/*.o"))
