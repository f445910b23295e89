"""The wheel `make wheel` builds (dist/): it carries libuv, installs into a fresh venv
that has neither fastloop's sources nor a libuv of its own to lean on, runs an asyncio
program there, and its metadata is complete.

The wheel is made by `make wheel` (`make wheel-3.12`...), not here: a C++ build takes
minutes. `make pytest` builds it first and sets FASTLOOP_WHEEL_REQUIRED, so under
`make test` a missing wheel fails these tests; a bare pytest without one skips them,
saying so. Each Python has a wheel of its own (cp311, cp312...): the running one's is
tested.
"""

import email.parser
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"

# Generous bounds so that a hung child fails the test instead of hanging it; no
# assertion is made on how long anything takes.
STEP_TIMEOUT = 50

# Runs in the fresh venv, with nothing but the wheel installed: a timer, a TCP echo over
# loopback, and where fastloop and the libuv in the process were loaded from.
PROGRAM = r"""
import asyncio
import json

import fastloop


async def echo(reader, writer):
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def main():
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    loop.call_later(0.01, fired.set_result, "timer fired")
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping over fastloop")
    reply = await reader.read(100)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return {
        "loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
        "timer": await fired,
        "echo": reply.decode(),
    }


result = fastloop.run(main())
with open("/proc/self/maps") as maps:
    libuv = sorted({line.split()[-1] for line in maps if "libuv" in line})
result.update(fastloop=fastloop.__file__, core=fastloop._core.__file__, libuv=libuv)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = sorted(DIST.glob(f"fastloop-*-{PY_TAG}-{PY_TAG}-manylinux*.whl"))
    if not found:
        why = f"no manylinux wheel for {PY_TAG} in dist/: `make wheel` builds one"
        if os.environ.get("FASTLOOP_WHEEL_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    assert len(found) == 1, f"several wheels for {PY_TAG} in dist/: {found}"
    return found[0]


def _run(cmd, **kwargs) -> str:
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        **kwargs,
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict:
    """The environment without what would point a Python at our sources or venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with the wheel installed in it, from the file alone (--no-index)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    py = venv / "bin" / "python"
    # This venv's pip installs into the new one (--python): no pip to bootstrap there.
    _run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index"]
        + ["--no-deps", wheel],
        env=env,
    )
    return venv


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_runs_a_program_in_a_fresh_venv(fresh_venv, tmp_path):
    py = fresh_venv / "bin" / "python"
    # -I: no PYTHONPATH, user site or script directory, so the import cannot reach the
    # source tree; the working directory is an empty one besides.
    out = _run([py, "-I", "-c", PROGRAM], cwd=tmp_path, env=_clean_env())
    result = json.loads(out)
    assert result["loop"] == "fastloop.Loop"
    assert result["timer"] == "timer fired"
    assert result["echo"] == "ping over fastloop"
    site = Path(result["fastloop"]).resolve().parent.parent
    assert site.is_relative_to(fresh_venv.resolve()), result["fastloop"]
    assert Path(result["core"]).resolve().parent == site / "fastloop"
    # The process's libuv is the wheel's copy (or none: linked into the module).
    for path in result["libuv"]:
        assert Path(path).resolve().parent == site / "fastloop.libs", result["libuv"]


def _dynamic(so_bytes: bytes) -> tuple[list[str], list[str], set[str]]:
    """(DT_NEEDED names, RPATH/RUNPATH entries, defined dynamic symbols) of an ELF file."""
    import io

    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(so_bytes))
    needed, paths = [], []
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag in ("DT_RPATH", "DT_RUNPATH"):
                    paths += (tag.rpath if tag.entry.d_tag == "DT_RPATH" else tag.runpath).split(
                        ":"
                    )
    dynsym = elf.get_section_by_name(".dynsym")
    defined = {s.name for s in dynsym.iter_symbols() if s["st_shndx"] != "SHN_UNDEF"}
    return needed, paths, defined


def test_the_wheel_carries_libuv(wheel):
    # auditwheel's verdict: a manylinux tag only if every library the module needs is
    # in the wheel or one that every manylinux system has. libuv is not one of those:
    # the wheel pip builds, which needs the system's libuv.so.1, is "linux_x86_64".
    shown = " ".join(_run([sys.executable, "-m", "auditwheel", "show", wheel]).split())
    tag = re.search(r'consistent with the following platform tag: "([^"]+)"', shown)
    assert tag, shown
    assert tag[1].startswith("manylinux_") and tag[1] in wheel.name, shown

    names = _wheel_names(wheel)
    (core,) = [n for n in names if re.fullmatch(r"fastloop/_core\..*\.so", n)]
    with zipfile.ZipFile(wheel) as zf:
        needed, rpath, defined = _dynamic(zf.read(core))
    grafted = [n for n in names if re.fullmatch(r"fastloop\.libs/libuv-[0-9a-f]+\.so[.\d]*", n)]
    if grafted:
        # auditwheel repair copied the libuv the module was linked with into the wheel
        # under a name of its own and made the module load that one.
        (libuv,) = grafted
        assert Path(libuv).name in needed, needed
        assert "$ORIGIN/../fastloop.libs" in rpath, rpath
    else:
        # The other way to carry libuv (CMakeLists.txt prefers it when the system's
        # static archive is position-independent): its code is in the module itself.
        assert "uv_run" in defined, "libuv is neither in fastloop.libs/ nor linked in"
    assert not [n for n in needed if n.startswith("libuv.so")], needed
    # libuv's licence notice travels with it.
    assert "fastloop/LICENSE-libuv.txt" in names


def test_the_wheel_metadata_is_complete(wheel):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = _wheel_names(wheel)
    with zipfile.ZipFile(wheel) as zf:
        meta = email.parser.Parser().parsestr(
            zf.read(f"fastloop-{project['version']}.dist-info/METADATA").decode()
        )
        licence = zf.read(f"fastloop-{project['version']}.dist-info/licenses/LICENSE").decode()
    assert meta["Name"] == "fastloop"
    assert meta["Version"] == project["version"]
    assert meta["Summary"] == project["description"]
    assert meta["License"] == "MIT"
    assert licence.startswith("MIT License")
    assert meta["Requires-Python"] == project["requires-python"]
    classifiers = meta.get_all("Classifier")
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert f"Programming Language :: Python :: {sys.version_info[0]}.{sys.version_info[1]}" in (
        classifiers
    )
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Source", "Issues", "Documentation"}
    assert all(u.startswith("https://") for u in urls.values()), urls
    # The long description is the README, as Markdown.
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == (ROOT / "README.md").read_text().strip()
    assert any(n.endswith(".dist-info/RECORD") for n in names)
