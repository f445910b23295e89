"""The ways a program adopts fastloop in one line: ``python -m fastloop``,
``fastloop.run(loop_factory=)``, the gunicorn workers and the pytest plugin.

These are fastloop's own entry points: asyncio's loop has none of them, so the tests
do not use the parametrized ``loop`` fixture. Each shows that the program ran on a
``fastloop.Loop``. Programs run in child interpreters (tmp_path holds their files).
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import fastloop
import pytest

pytestmark = pytest.mark.timeout(60)

# Prints what the adoption paths must give a program: the loop asyncio made for it,
# whether it is in debug mode, argv, __name__ and sys.path[0].
PROGRAM = """
import asyncio, sys

async def main():
    loop = asyncio.get_running_loop()
    return type(loop).__module__, type(loop).__name__, loop.get_debug()

module, name, debug = asyncio.run(main())
print(f"{module}.{name}", debug, sys.argv, __name__, sys.path[0], sep="|")
"""


def python(*args, cwd=None, env=None, stdin=None, timeout=30):
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fields(out):
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout.strip().split("|")


# ---- python -m fastloop ----------------------------------------------------------------


def test_python_m_fastloop_runs_a_script_as_python_would(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    loop, debug, argv, name, path0 = fields(python("-m", "fastloop", str(script), "a", "-b"))
    assert loop == "fastloop.Loop"
    assert debug == "False"
    assert argv == repr([str(script), "a", "-b"])
    assert name == "__main__"
    assert path0 == str(tmp_path)


def test_python_m_fastloop_runs_a_module(tmp_path):
    (tmp_path / "progmod.py").write_text(PROGRAM)
    loop, _, argv, name, path0 = fields(
        python("-m", "fastloop", "-m", "progmod", "x", cwd=tmp_path)
    )
    assert loop == "fastloop.Loop"
    assert argv == repr([str(tmp_path / "progmod.py"), "x"])
    assert name == "__main__"
    assert path0 == str(tmp_path)


def test_python_m_fastloop_runs_a_command():
    loop, _, argv, name, path0 = fields(python("-m", "fastloop", "-c", PROGRAM, "y"))
    assert loop == "fastloop.Loop"
    assert argv == repr(["-c", "y"])
    assert name == "__main__"
    assert path0 == ""


def test_python_m_fastloop_follows_the_interpreters_asyncio_debug_switches(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    assert fields(python("-X", "dev", "-m", "fastloop", str(script)))[:2] == [
        "fastloop.Loop",
        "True",
    ]
    env = {"PYTHONASYNCIODEBUG": "1"}
    assert fields(python("-m", "fastloop", str(script), env=env))[:2] == ["fastloop.Loop", "True"]
    # -E: the environment is ignored, as asyncio ignores PYTHONASYNCIODEBUG then.
    assert fields(python("-E", "-m", "fastloop", str(script), env=env))[:2] == [
        "fastloop.Loop",
        "False",
    ]


def test_python_m_fastloop_passes_the_programs_exit_status_and_errors(tmp_path):
    (tmp_path / "exits.py").write_text("import sys; sys.exit(3)")
    assert python("-m", "fastloop", str(tmp_path / "exits.py")).returncode == 3
    (tmp_path / "fails.py").write_text("raise LookupError('from the program')")
    out = python("-m", "fastloop", str(tmp_path / "fails.py"))
    assert out.returncode == 1
    assert "LookupError: from the program" in out.stderr


def test_python_m_fastloop_usage():
    out = python("-m", "fastloop", "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: python -m fastloop")
    for bad in (["-m"], ["-c"], ["--stat"]):
        out = python("-m", "fastloop", *bad)
        assert out.returncode == 2, bad
        assert "python -m fastloop: error:" in out.stderr


def test_python_m_fastloop_without_a_program_is_asyncios_repl_on_fastloop():
    lines = "import asyncio\nprint(type(asyncio.get_running_loop()).__module__)\n"
    lines += "await asyncio.sleep(0.01)\n"
    out = python("-m", "fastloop", stdin=lines)
    assert out.returncode == 0, out.stderr
    assert "\nfastloop\n" in out.stdout.replace(">>> ", "\n")
    # The REPL's loop is left to the interpreter's exit: nothing may fail then.
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


# ---- fastloop.run(loop_factory=) ---------------------------------------------------------


async def loop_type():
    import asyncio

    return type(asyncio.get_running_loop())


def test_run_with_a_loop_factory_of_a_fastloop_subclass():
    class MyLoop(fastloop.Loop):
        pass

    assert fastloop.run(loop_type(), loop_factory=MyLoop) is MyLoop
    assert fastloop.run(loop_type(), loop_factory=None) is fastloop.Loop


def test_run_refuses_a_loop_factory_that_makes_another_loop():
    import asyncio

    made = []

    def other():
        made.append(asyncio.SelectorEventLoop())
        return made[-1]

    coro = loop_type()
    with pytest.raises(TypeError, match="fastloop.run\\(\\) uses fastloop loops"):
        fastloop.run(coro, loop_factory=other)
    coro.close()
    assert made[0].is_closed()


# ---- gunicorn workers --------------------------------------------------------------------

ASGI_APP = """
import asyncio

async def app(scope, receive, send):
    assert scope["type"] == "http"
    loop = asyncio.get_running_loop()
    body = f"{type(loop).__module__}.{type(loop).__name__}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""

AIOHTTP_APP = """
import asyncio
from aiohttp import web

async def which(request):
    loop = asyncio.get_running_loop()
    return web.Response(text=f"{type(loop).__module__}.{type(loop).__name__}")

app = web.Application()
app.router.add_get("/", which)
"""


def stop(proc, sig):
    """Send `sig` to a server started in a session of its own; if it has not exited
    30 s later, kill its whole process group (its workers too) and fail."""
    proc.send_signal(sig)
    try:
        rest, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        raise AssertionError(f"the server ignored {sig!r} for 30 s:\n{rest}") from None
    return rest


def serve_with_gunicorn(tmp_path, worker, app_source, app):
    (tmp_path / "served.py").write_text(textwrap.dedent(app_source))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", worker, "-w", "1", "-b", "127.0.0.1:0",
         "--chdir", str(tmp_path), "--graceful-timeout", "5", app],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    log = []
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            log.append(line)
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        assert port is not None, "".join(log)
        # The worker boots after the arbiter listens: retry until it answers.
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        log.append(stop(proc, signal.SIGTERM))
        assert "Traceback" not in "".join(log), "".join(log)


def test_gunicorn_uvicorn_worker_serves_on_fastloop(tmp_path):
    status, body = serve_with_gunicorn(
        tmp_path, "fastloop.workers.UvicornWorker", ASGI_APP, "served:app"
    )
    assert (status, body) == (200, "fastloop.Loop")


def test_gunicorn_aiohttp_worker_serves_on_fastloop(tmp_path):
    status, body = serve_with_gunicorn(
        tmp_path, "fastloop.workers.AiohttpWorker", AIOHTTP_APP, "served:app"
    )
    assert (status, body) == (200, "fastloop.Loop")


def test_workers_module_imports_without_gunicorn():
    out = python(
        "-c",
        textwrap.dedent("""
            import sys
            sys.modules["gunicorn"] = None  # as if not installed
            import fastloop.workers
            print(sorted(fastloop.workers.__all__))
            try:
                fastloop.workers.UvicornWorker
            except ImportError as exc:
                print(exc)
        """),
    )
    assert out.returncode == 0, out.stderr
    names, error = out.stdout.strip().splitlines()
    assert names == "['AiohttpWorker', 'UvicornWorker']"
    assert error.startswith("fastloop.workers.UvicornWorker needs gunicorn and its server")


# ---- servers and libraries started with fastloop (README: "Using fastloop with ...") -----


def serve_and_get(tmp_path, args, app_source, pattern, port=None):
    """Start a server process, GET / once it prints its address (`pattern`'s group 1;
    or once it prints `pattern`, for a server given `port`), stop it with SIGINT."""
    (tmp_path / "served.py").write_text(textwrap.dedent(app_source))
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    log = []
    try:
        deadline = time.monotonic() + 30
        ready = False
        while not ready and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            log.append(line)
            m = re.search(pattern, line)
            if m:
                ready = True
                port = port or int(m.group(1))
        assert ready, "".join(log)
        # A server may print its address a moment before its worker listens.
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except (ConnectionError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        log.append(stop(proc, signal.SIGINT))
        assert "Traceback" not in "".join(log), "".join(log)


def test_uvicorn_cli_with_a_fastloop_loop_factory(tmp_path):
    args = ["-m", "uvicorn", "served:app", "--loop", "fastloop:new_event_loop", "--port", "0"]
    got = serve_and_get(tmp_path, args, ASGI_APP, r"running on http://127\.0\.0\.1:(\d+)")
    assert got == (200, "fastloop.Loop")


def test_uvicorn_config_with_a_fastloop_loop_factory(tmp_path):
    runner = """
        import uvicorn
        uvicorn.run("served:app", port=0, loop="fastloop:new_event_loop")
    """
    (tmp_path / "run_it.py").write_text(textwrap.dedent(runner))
    got = serve_and_get(tmp_path, ["run_it.py"], ASGI_APP, r"running on http://127\.0\.0\.1:(\d+)")
    assert got == (200, "fastloop.Loop")


def test_aiohttp_run_app_on_a_fastloop_loop(tmp_path):
    source = AIOHTTP_APP + textwrap.dedent("""
        import fastloop
        web.run_app(app, host="127.0.0.1", port=0, loop=fastloop.new_event_loop())
    """)
    got = serve_and_get(tmp_path, ["served.py"], source, r"on http://127\.0\.0\.1:(\d+)")
    assert got == (200, "fastloop.Loop")


GRANIAN_RUNNER = """
import asyncio, sys

import fastloop, granian
from granian import Granian
from granian.constants import Interfaces

@granian.loops.register("fastloop")
def build_fastloop():
    loop = fastloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop

if __name__ == "__main__":
    Granian("served:app", interface=Interfaces.ASGI, port=int(sys.argv[1]), loop="fastloop").serve()
"""


def test_granian_python_api_with_fastloop_registered(tmp_path):
    # granian's workers inherit the registration: they are forked (multiprocessing's
    # start method on Linux before Python 3.14).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "run_granian.py").write_text(GRANIAN_RUNNER)
    # It says "Listening" before its worker is up: wait for the worker's line.
    got = serve_and_get(
        tmp_path, ["run_granian.py", str(port)], ASGI_APP, r"Started worker-1", port=port
    )
    assert got == (200, "fastloop.Loop")


def test_anyio_run_with_fastloop_as_the_loop_factory():
    import anyio

    async def which():
        await anyio.sleep(0)
        return type(__import__("asyncio").get_running_loop())

    got = anyio.run(
        which, backend="asyncio", backend_options={"loop_factory": fastloop.new_event_loop}
    )
    assert got is fastloop.Loop


def test_fastloop_from_inside_a_running_loop_in_a_thread():
    # A notebook's (Jupyter, IPython) loop is running already: fastloop runs the
    # coroutine in a worker thread, and the notebook awaits that.
    import asyncio

    async def notebook_cell():
        return await asyncio.to_thread(fastloop.run, loop_type())

    assert asyncio.run(notebook_cell()) is fastloop.Loop


# ---- the pytest plugin ------------------------------------------------------------------

SUITE = """
import asyncio
import unittest

import anyio
import pytest

def kind(loop):
    return f"{type(loop).__module__}.{type(loop).__name__}"

def test_asyncio_run():
    async def main():
        return kind(asyncio.get_running_loop())
    assert asyncio.run(main()) == "fastloop.Loop"

@pytest.mark.asyncio
async def test_pytest_asyncio():
    assert kind(asyncio.get_running_loop()) == "fastloop.Loop"

@pytest.fixture(params=["asyncio", ("asyncio", {"debug": True})])
def anyio_backend(request):
    return request.param

@pytest.mark.anyio
async def test_anyio():
    await anyio.sleep(0)
    assert kind(asyncio.get_running_loop()) == "fastloop.Loop"

class TestUnittest(unittest.IsolatedAsyncioTestCase):
    async def test_isolated(self):
        self.assertEqual(kind(asyncio.get_running_loop()), "fastloop.Loop")
"""


def run_suite(tmp_path, *plugin):
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    return python("-m", "pytest", "-p", "no:cacheprovider", *plugin, "test_suite.py", cwd=tmp_path)


def test_pytest_plugin_runs_an_unchanged_asyncio_suite_on_fastloop(tmp_path):
    out = run_suite(tmp_path, "-p", "fastloop.pytest_plugin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout
    assert "event loop: fastloop" in out.stdout
    # The same suite without the plugin runs on asyncio's loop: each test then fails.
    out = run_suite(tmp_path)
    assert "5 failed" in out.stdout, out.stdout + out.stderr


ANYIO_SUITE = """
import asyncio

import anyio
import pytest

import fastloop

@pytest.fixture
def anyio_backend():
    return ("asyncio", {"loop_factory": fastloop.new_event_loop})

@pytest.mark.anyio
async def test_on_fastloop():
    await anyio.sleep(0)
    assert type(asyncio.get_running_loop()) is fastloop.Loop
"""


def test_anyio_pytest_backend_with_fastloop_as_the_loop_factory(tmp_path):
    (tmp_path / "test_anyio_suite.py").write_text(ANYIO_SUITE)
    out = python(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_anyio_suite.py", cwd=tmp_path
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
