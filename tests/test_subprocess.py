"""Subprocesses: create_subprocess_exec / create_subprocess_shell and the low-level
loop.subprocess_exec / subprocess_shell.

Covered: every stdin/stdout/stderr kind (PIPE, DEVNULL, STDOUT, an fd, a file object,
None; a PIPE is a FIFO the child can reopen as /dev/stdin), communicate() and wait(),
exit codes and deaths by signal, signalling an exited process, the Popen options asyncio
passes through (cwd, env and the PATH lookup in it, executable, start_new_session,
process_group, pass_fds, close_fds, restore_signals, preexec_fn, user/group, bufsize=0),
asyncio's argument checks and spawn errors, the SubprocessTransport / SubprocessProtocol
API and its callback order, exits while the loop is busy, a 500-process storm (every
status collected, no zombie left), 64 MiB through a child's stdin and stdout, large
stdout and stderr at once, and stdin flow control against a child that does not read.
"""

import asyncio
import builtins
import contextlib
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import pytest

from .netutil import pattern, run, sha256

pytestmark = pytest.mark.timeout(30)

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT
PY = sys.executable
MiB = 1024 * 1024

# A Python child that restores the default action of the signals the tests send (the
# test process may have been started with some of them ignored), says it is ready (so
# a signal never arrives before exec), then sleeps.
SIGNAL_TARGET = """\
import signal, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, signal.SIG_DFL)
print("ready", flush=True)
time.sleep(60)
"""

# Prints "open" or "closed <errno>" for each fd number given as an argument.
FD_STATE = """\
import os, sys
for a in sys.argv[1:]:
    try:
        os.fstat(int(a))
        print("open")
    except OSError as e:
        print("closed", e.errno)
"""


@contextlib.contextmanager
def pipe_files():
    """os.pipe() as two unbuffered file objects (closing one twice is harmless)."""
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as rf, open(w, "wb", buffering=0) as wf:
        yield rf, wf


def open_fds():
    return set(os.listdir("/proc/self/fd"))


async def kill_and_wait(proc):
    """Make sure ``proc`` is gone (a failing test must not leave a child behind)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def signal_target():
    proc = await asyncio.create_subprocess_exec(PY, "-c", SIGNAL_TARGET, stdout=PIPE)
    assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
    return proc


class SubRecorder(asyncio.SubprocessProtocol):
    """Records SubprocessProtocol callbacks in order; consecutive data of one fd folds."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.transport = None
        self.returncode_at_exit = "not called"
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        assert isinstance(data, bytes), type(data)
        self.data[fd] += data
        if self.events[-1] != ("data", fd):
            self.events.append(("data", fd))

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.events.append("exited")
        self.returncode_at_exit = self.transport.get_returncode()
        self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


# -- stdin / stdout / stderr ---------------------------------------------------------------


def test_all_pipes_communicate(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "cat; echo to-err >&2", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        assert isinstance(proc.stdin, asyncio.StreamWriter)
        assert isinstance(proc.stdout, asyncio.StreamReader)
        assert isinstance(proc.stderr, asyncio.StreamReader)
        out = await proc.communicate(b"line one\nline two\n")
        return out, proc.returncode

    assert run(loop, main()) == ((b"line one\nline two\n", b"to-err\n"), 0)


def test_stdin_devnull_and_stdout_stderr_devnull(loop):
    async def main():
        # cat reads EOF from /dev/null at once.
        p1 = await asyncio.create_subprocess_exec("cat", stdin=DEVNULL, stdout=PIPE)
        r1 = (p1.stdin, await p1.stdout.read(), await p1.wait())
        p2 = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "echo out; echo err >&2; exit 2", stdout=DEVNULL, stderr=DEVNULL
        )
        r2 = (p2.stdout, p2.stderr, await p2.communicate(), p2.returncode)
        return r1, r2

    assert run(loop, main()) == ((None, b"", 0), (None, None, (None, None), 2))


def test_stderr_stdout_merges(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "echo out1; echo err1 >&2; echo out2", stdout=PIPE, stderr=STDOUT
        )
        assert proc.stderr is None
        return await proc.communicate()

    assert run(loop, main()) == (b"out1\nerr1\nout2\n", None)


def test_stdio_as_fds(loop):
    async def main():
        r, w = os.pipe()
        os.write(w, b"from an fd\n")
        os.close(w)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    "/bin/sh",
                    "-c",
                    "cat; echo e >&2",
                    stdin=r,
                    stdout=out.fileno(),
                    stderr=err.fileno(),
                )
            finally:
                os.close(r)
            assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
            rc = await proc.wait()
            out.seek(0)
            err.seek(0)
            return rc, out.read(), err.read()

    assert run(loop, main()) == (0, b"from an fd\n", b"e\n")


def test_stdio_as_file_objects(loop):
    async def main():
        with (
            tempfile.TemporaryFile() as inp,
            tempfile.TemporaryFile() as out,
            tempfile.TemporaryFile() as err,
        ):
            inp.write(b"from a file object\n")
            inp.seek(0)
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", "cat; echo e >&2; exit 3", stdin=inp, stdout=out, stderr=err
            )
            rc = await proc.wait()
            out.seek(0)
            err.seek(0)
            return rc, out.read(), err.read()

    assert run(loop, main()) == (3, b"from a file object\n", b"e\n")


def test_stdio_none_inherits(loop, capfd):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "echo inherited-out; echo inherited-err >&2"
        )
        assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
        return await proc.wait()

    capfd.readouterr()
    assert run(loop, main()) == 0
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("inherited-out\n", "inherited-err\n")


def test_stderr_stdout_with_inherited_stdout(loop, capfd):
    # stderr=STDOUT with stdout inherited: both go to this process's stdout.
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "echo o; echo e >&2", stderr=STDOUT
        )
        return await proc.wait()

    capfd.readouterr()
    assert run(loop, main()) == 0
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("o\ne\n", "")


def test_shell_stdio_kinds(loop):
    async def main():
        with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out:
            inp.write(b"shell stdin from a file\n")
            inp.seek(0)
            p1 = await asyncio.create_subprocess_shell(
                "cat; echo err >&2", stdin=inp, stdout=PIPE, stderr=STDOUT
            )
            r1 = await p1.communicate()
            p2 = await asyncio.create_subprocess_shell(
                "cat; echo err >&2; exit 1", stdin=DEVNULL, stdout=out.fileno(), stderr=DEVNULL
            )
            rc2 = await p2.wait()
            out.seek(0)
            return r1, p1.returncode, (p2.stdin, p2.stdout, p2.stderr), rc2, out.read()

    assert run(loop, main()) == (
        (b"shell stdin from a file\nerr\n", None),
        0,
        (None, None, None),
        1,
        b"",
    )


def test_stdin_pipe_only(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "print(input())", stdin=PIPE)
        proc.stdin.write(b"no stdout pipe\n")
        await proc.stdin.drain()
        proc.stdin.close()
        await proc.stdin.wait_closed()
        return proc.stdout, await proc.wait()

    assert run(loop, main()) == (None, 0)


# The child checks what its PIPE stdio are, then reopens them by path, as `cat
# /dev/stdin` or `tee /dev/stdout` do. Both need pipes: on a Unix socket the open
# fails with ENXIO (what uvloop's socketpairs give, MagicStack/uvloop#505, #532).
REOPEN_STDIO = """\
import os, stat, sys
kinds = ["fifo" if stat.S_ISFIFO(os.fstat(fd).st_mode) else "other" for fd in (0, 1, 2)]
data = open("/dev/stdin", "rb").read()
with open("/proc/self/fd/1", "wb") as out:
    out.write(" ".join(kinds).encode() + b" " + data)
with open("/dev/stderr", "wb") as err:
    err.write(b"err")
"""


def test_pipe_stdio_are_fifos_the_child_can_reopen(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", REOPEN_STDIO, stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        return await proc.communicate(b"in"), proc.returncode

    assert run(loop, main()) == ((b"fifo fifo fifo in", b"err"), 0)


# -- exit status and signals ------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 255])
def test_exit_codes(loop, code):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {code}")
        rc = await proc.wait()
        # wait() again returns the same code at once.
        return rc, proc.returncode, await proc.wait()

    assert run(loop, main()) == (code, code, code)


def test_shell_str_and_bytes_commands(loop):
    async def main():
        p1 = await asyncio.create_subprocess_shell("echo $((6 * 7)); exit 4", stdout=PIPE)
        p2 = await asyncio.create_subprocess_shell(b"echo bytes >&2; exit 5", stderr=PIPE)
        return await p1.communicate(), p1.returncode, await p2.communicate(), p2.returncode

    assert run(loop, main()) == ((b"42\n", None), 4, (None, b"bytes\n"), 5)


@pytest.mark.parametrize(
    "how, signum",
    [
        ("terminate", signal.SIGTERM),
        ("kill", signal.SIGKILL),
        ("send_signal", signal.SIGUSR1),
        ("send_signal", signal.SIGINT),
        ("send_signal", signal.SIGTERM),
    ],
)
def test_killed_by_signal_gives_negative_returncode(loop, how, signum):
    async def main():
        proc = await signal_target()
        try:
            assert proc.returncode is None  # it sleeps
            if how == "send_signal":
                proc.send_signal(signum)
            else:
                getattr(proc, how)()
            return await proc.wait(), proc.returncode
        finally:
            await kill_and_wait(proc)

    assert run(loop, main()) == (-signum, -signum)


def signal_all_ways(target):
    """Call send_signal(SIGUSR1), terminate() and kill(); the exception type each raised."""
    raised = []
    for send in (lambda: target.send_signal(signal.SIGUSR1), target.terminate, target.kill):
        try:
            send()
        except Exception as exc:
            raised.append(type(exc))
        else:
            raised.append(None)
    return raised


def test_signal_after_the_transport_finished_raises_process_lookup_error(loop):
    # Once the subprocess transport has finished (the protocol's connection_lost ran),
    # asyncio's transport has dropped its Popen: every signalling method raises
    # ProcessLookupError instead of signalling a pid that may have been reused.
    async def main():
        tr, pr = await loop.subprocess_exec(
            SubRecorder, "/bin/sh", "-c", "exit 6", stdin=None, stdout=None, stderr=None
        )
        try:
            await asyncio.wait_for(pr.lost, 10)
            return signal_all_ways(tr), tr.get_returncode()
        finally:
            tr.close()

    assert run(loop, main()) == ([ProcessLookupError] * 3, 6)


def test_process_signal_after_exit_raises_process_lookup_error(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 6")
        assert await proc.wait() == 6
        # wait() returns as soon as the exit is known; the transport finishes in the
        # callback asyncio queued at that same moment, so one loop iteration later.
        await asyncio.sleep(0)
        return signal_all_ways(proc), proc.returncode

    assert run(loop, main()) == ([ProcessLookupError] * 3, 6)


# -- Popen options ----------------------------------------------------------------------


def test_cwd(loop, tmp_path):
    async def main():
        proc = await asyncio.create_subprocess_exec("/bin/pwd", cwd=tmp_path, stdout=PIPE)
        out, _ = await proc.communicate()
        return out.decode().strip()

    assert run(loop, main()) == os.path.realpath(tmp_path)


def test_env_is_the_whole_environment(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/env", env={"ONLY_THIS": "1", "AND_THIS": "two words"}, stdout=PIPE
        )
        out, _ = await proc.communicate()
        p2 = await asyncio.create_subprocess_shell(
            "echo $FROM_ENV", env={"FROM_ENV": "x"}, stdout=PIPE
        )
        out2, _ = await p2.communicate()
        return sorted(out.decode().splitlines()), out2

    assert run(loop, main()) == (["AND_THIS=two words", "ONLY_THIS=1"], b"x\n")


@pytest.mark.parametrize("new_session", [True, False])
def test_start_new_session(loop, new_session):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import os; print(os.getsid(0), os.getpid())",
            stdout=PIPE,
            start_new_session=new_session,
        )
        out, _ = await proc.communicate()
        sid, pid = map(int, out.split())
        return proc.pid, sid, pid

    proc_pid, sid, pid = run(loop, main())
    assert pid == proc_pid
    if new_session:
        assert sid == pid
    else:
        assert sid == os.getsid(0) != pid


def test_pass_fds(loop):
    async def main():
        with pipe_files() as (rf, wf), pipe_files() as (_, other_wf):
            w, other_w = wf.fileno(), other_wf.fileno()
            # Inheritable, but neither passed nor one of the stdio fds.
            os.set_inheritable(other_w, True)
            proc = await asyncio.create_subprocess_exec(
                PY,
                "-c",
                FD_STATE + "os.write(int(sys.argv[1]), b'through a passed fd')",
                str(w),
                str(other_w),
                stdout=PIPE,
                pass_fds=(w,),
            )
            wf.close()
            out, _ = await proc.communicate()
            return out.decode().splitlines(), rf.read(), proc.returncode

    lines, passed, rc = run(loop, main())
    assert rc == 0
    assert passed == b"through a passed fd"
    # The passed fd is open in the child; the inheritable one not passed is closed
    # (close_fds=True is the default, and pass_fds forces it).
    assert lines == ["open", "closed 9"]


def test_close_fds_false_keeps_inheritable_fds(loop):
    async def main():
        r, w = os.pipe()
        os.set_inheritable(w, True)
        try:
            results = []
            for close_fds in (False, True):
                proc = await asyncio.create_subprocess_exec(
                    PY, "-c", FD_STATE, str(w), stdout=PIPE, close_fds=close_fds
                )
                out, _ = await proc.communicate()
                results.append(out.decode().strip())
            return results
        finally:
            os.close(r)
            os.close(w)

    assert run(loop, main()) == ["open", "closed 9"]


def test_preexec_fn_runs_in_the_child(loop):
    async def main():
        with pipe_files() as (rf, wf):
            w = wf.fileno()
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                'echo $$; echo "$PREEXEC_SET"',
                stdout=PIPE,
                preexec_fn=lambda: (
                    os.write(w, str(os.getpid()).encode()),
                    os.putenv("PREEXEC_SET", "yes"),
                ),
            )
            wf.close()
            out, _ = await proc.communicate()
            return proc.pid, out.decode().split(), rf.read().decode()

    pid, (child_pid, env_value), preexec_pid = run(loop, main())
    assert int(child_pid) == pid == int(preexec_pid)
    assert env_value == "yes"
    assert "PREEXEC_SET" not in os.environ


def test_preexec_fn_raising(loop):
    def fail():
        raise RuntimeError("in preexec")

    async def main():
        before = open_fds()
        with pytest.raises(subprocess.SubprocessError, match="preexec_fn"):
            await asyncio.create_subprocess_exec("true", stdout=PIPE, preexec_fn=fail)
        return open_fds() - before

    assert run(loop, main()) == set()


def test_user_and_group(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            "id -u; id -g; id -G",
            stdout=PIPE,
            user=65534,
            group=65534,
            extra_groups=[],
        )
        out, _ = await proc.communicate()
        return out.decode().split(), proc.returncode

    if os.geteuid() == 0:
        assert run(loop, main()) == (["65534", "65534", "65534"], 0)
    else:
        # Not root: the child's setgroups()/setgid() fails and Popen re-raises it.
        with pytest.raises(PermissionError):
            run(loop, main())


def test_unknown_user_name_raises_key_error(loop):
    async def main():
        before = open_fds()
        with pytest.raises(KeyError):
            await asyncio.create_subprocess_exec(
                "true", stdout=PIPE, user="no-such-user-fastloop-test"
            )
        return open_fds() - before

    assert run(loop, main()) == set()


def test_executable_argument(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "shown-as-argv0", "-c", 'echo "$0"', executable="/bin/sh", stdout=PIPE
        )
        return await proc.communicate()

    assert run(loop, main()) == (b"shown-as-argv0\n", None)


def test_program_is_looked_up_in_the_given_env_path(loop, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "fastloop-test-prog"
    prog.write_text("#!/bin/sh\necho found in env PATH\n")
    prog.chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()

    async def main():
        p1 = await asyncio.create_subprocess_exec(
            "fastloop-test-prog", env={"PATH": str(bindir)}, stdout=PIPE
        )
        out1, _ = await p1.communicate()
        # Not on this PATH, although on the test process's own PATH.
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("cat", env={"PATH": str(empty)}, stdout=PIPE)
        # No PATH at all: os.defpath is searched.
        p2 = await asyncio.create_subprocess_exec("cat", env={}, stdin=PIPE, stdout=PIPE)
        out2, _ = await p2.communicate(b"via os.defpath")
        return out1, out2

    assert run(loop, main()) == (b"found in env PATH\n", b"via os.defpath")


@pytest.mark.parametrize("restore", [True, False])
def test_restore_signals(loop, restore):
    # Python ignores SIGPIPE; restore_signals=True (the default) gives the child the
    # default action back, restore_signals=False lets it inherit the "ignore".
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "grep", "SigIgn", "/proc/self/status", stdout=PIPE, restore_signals=restore
        )
        out, _ = await proc.communicate()
        return int(out.split()[1], 16)

    ignored = run(loop, main())
    assert bool(ignored & (1 << (signal.SIGPIPE - 1))) is (not restore)


@pytest.mark.parametrize("process_group", [0, None])
def test_process_group(loop, process_group):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import os; print(os.getpgid(0), os.getpid())",
            stdout=PIPE,
            process_group=process_group,
        )
        out, _ = await proc.communicate()
        return proc.pid, *map(int, out.split())

    proc_pid, pgid, pid = run(loop, main())
    assert pid == proc_pid
    if process_group == 0:
        assert pgid == pid
    else:
        assert pgid == os.getpgid(0) != pid


def test_pass_fds_overrides_close_fds_false(loop):
    async def main():
        with pipe_files() as (rf, wf):
            w = wf.fileno()
            with pytest.warns(RuntimeWarning, match="pass_fds overriding close_fds"):
                proc = await asyncio.create_subprocess_exec(
                    PY,
                    "-c",
                    f"import os; os.write({w}, b'passed')",
                    pass_fds=(w,),
                    close_fds=False,
                )
            wf.close()
            return await proc.wait(), rf.read()

    assert run(loop, main()) == (0, b"passed")


def test_bufsize_zero_is_accepted(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, bufsize=0)
        p2 = await asyncio.create_subprocess_shell("cat", stdin=PIPE, stdout=PIPE, bufsize=0)
        return await proc.communicate(b"exec"), await p2.communicate(b"shell")

    assert run(loop, main()) == ((b"exec", None), (b"shell", None))


# -- argument checks and spawn errors --------------------------------------------------------


BAD_KWARGS = [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
    ({"bufsize": 1}, "bufsize must be 0"),
]


@pytest.mark.parametrize("kind", ["exec", "shell"])
@pytest.mark.parametrize("kwargs, message", BAD_KWARGS, ids=[k for (k,), _ in BAD_KWARGS])
def test_text_mode_and_buffering_are_refused(loop, kind, kwargs, message):
    async def main():
        before = open_fds()
        with pytest.raises(ValueError) as info:
            if kind == "exec":
                await asyncio.create_subprocess_exec("true", stdout=PIPE, **kwargs)
            else:
                await asyncio.create_subprocess_shell("true", stdout=PIPE, **kwargs)
        return str(info.value), open_fds() - before

    assert run(loop, main()) == (message, set())


def test_shell_argument_misuse(loop):
    async def main():
        messages = []
        for call in (
            lambda: loop.subprocess_exec(SubRecorder, "true", shell=True),
            lambda: loop.subprocess_shell(SubRecorder, "true", shell=False),
            lambda: loop.subprocess_shell(SubRecorder, ["true"]),
            lambda: asyncio.create_subprocess_shell(["/bin/sh", "-c", "true"]),
        ):
            with pytest.raises(ValueError) as info:
                await call()
            messages.append(str(info.value))
        return messages

    assert run(loop, main()) == [
        "shell must be False",
        "shell must be True",
        "cmd must be a string",
        "cmd must be a string",
    ]


def test_missing_executable(loop):
    async def main():
        before = open_fds()
        with pytest.raises(FileNotFoundError) as info:
            await asyncio.create_subprocess_exec(
                "/nonexistent/fastloop-no-such-program", stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
        return info.value.filename, open_fds() - before

    assert run(loop, main()) == ("/nonexistent/fastloop-no-such-program", set())


def test_missing_cwd(loop, tmp_path):
    missing = tmp_path / "no-such-dir"

    async def main():
        before = open_fds()
        with pytest.raises(FileNotFoundError) as info:
            await asyncio.create_subprocess_exec("true", cwd=missing, stdout=PIPE)
        return info.value.filename, open_fds() - before

    # Popen reports the cwd argument as given (here a Path).
    assert run(loop, main()) == (missing, set())


def test_non_executable_file(loop, tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)

    async def main():
        before = open_fds()
        with pytest.raises(PermissionError) as info:
            await asyncio.create_subprocess_exec(str(script), stdout=PIPE)
        return info.value.filename, open_fds() - before

    assert run(loop, main()) == (str(script), set())


# -- the PATH search happens in the child, as subprocess.Popen's --------------------------


def describe_error(exc):
    """What the tests compare of an exception: its class, and errno, filename and message."""
    if isinstance(exc, OSError):
        return type(exc), exc.errno, exc.filename, str(exc)
    return type(exc), str(exc)


def popen_outcome(args, **kwargs):
    """What subprocess.Popen, which asyncio's loop calls, does with these arguments on
    this Python: ("exit", returncode, stdout), or the error it raises."""
    kwargs.setdefault("stdout", PIPE)
    try:
        proc = subprocess.Popen(args, **kwargs)
    except Exception as exc:
        return describe_error(exc)
    out, _ = proc.communicate(timeout=10)
    return "exit", proc.returncode, out


async def loop_outcome(args, **kwargs):
    """The same through asyncio.create_subprocess_exec on the running loop."""
    kwargs.setdefault("stdout", PIPE)
    try:
        proc = await asyncio.create_subprocess_exec(*args, **kwargs)
    except Exception as exc:
        return describe_error(exc)
    out, _ = await proc.communicate()
    return "exit", proc.returncode, out


# Python-level calls that look a path up in the filesystem. subprocess.Popen makes none
# of them while it starts a child (the PATH search and every exec happen in the child);
# a loop that made them would block its thread on the filesystem.
FS_LOOKUPS = [
    (os, ["stat", "lstat", "access", "open", "listdir", "scandir", "readlink"]),
    (os.path, ["exists", "lexists", "isfile", "isdir", "islink", "realpath"]),
    (shutil, ["which"]),
    (builtins, ["open"]),
]


@contextlib.contextmanager
def recording_fs_lookups():
    """Records the FS_LOOKUPS calls made on this thread (open() of an fd is no look-up)."""
    calls = []
    thread = threading.get_ident()

    def recorder(name, real):
        def record(*args, **kwargs):
            if threading.get_ident() == thread and not (args and isinstance(args[0], int)):
                calls.append(name)
            return real(*args, **kwargs)

        return record

    with pytest.MonkeyPatch.context() as mp:
        for module, names in FS_LOOKUPS:
            for name in names:
                mp.setattr(module, name, recorder(name, getattr(module, name)))
        yield calls


@pytest.mark.parametrize(
    "case", ["bare-name", "bare-name-env-path", "missing", "missing-env-path", "missing-cwd"]
)
def test_no_filesystem_lookup_on_the_loop_thread(loop, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": f"{empty}:/usr/bin:/bin"}
    args, kwargs = {
        "bare-name": (["true"], {}),
        "bare-name-env-path": (["true"], {"env": env}),
        "missing": (["fastloop-no-such-program"], {}),
        "missing-env-path": (["fastloop-no-such-program"], {"env": env}),
        "missing-cwd": (["true"], {"cwd": tmp_path / "no-such-dir"}),
    }[case]
    expected = popen_outcome(args, **kwargs)

    async def main():
        with recording_fs_lookups() as calls:
            try:
                proc = await asyncio.create_subprocess_exec(*args, stdout=PIPE, **kwargs)
            except OSError as exc:
                return describe_error(exc), calls
        out, _ = await proc.communicate()
        return ("exit", proc.returncode, out), calls

    assert run(loop, main()) == (expected, [])


ENOEXEC_BYTES = b"\x7fnot an executable format\n"


def path_dir(root, name, prog=None, mode=0o755):
    """A directory for PATH; with `prog` (bytes), a file named `prog` in it."""
    d = root / name
    d.mkdir()
    if prog is not None:
        (d / "prog").write_bytes(prog)
        (d / "prog").chmod(mode)
    return d


SCRIPT = b'#!/bin/sh\necho "ran $0"\n'


def prog(content, mode=0o755, suffix=""):
    """A PATH entry: a directory holding `prog` (written as given), plus `suffix`."""
    return ("prog", content, mode, suffix)


EMPTY_DIR = ("empty",)  # a directory without `prog`: ENOENT
A_FILE = ("file",)  # a regular file: ENOTDIR
DIR_NAMED_PROG = ("dir-prog",)  # `prog` is a directory: EACCES
EMPTY_ENTRY = ("",)  # the working directory

PATH_SCENARIOS = {
    # execve's ENOEXEC does not stop Popen's search (glibc's execvp would stop there).
    "enoexec-then-script": [prog(ENOEXEC_BYTES), prog(SCRIPT)],
    "eacces-then-script": [prog(SCRIPT, 0o644), prog(SCRIPT)],
    "dir-named-prog-then-script": [DIR_NAMED_PROG, prog(SCRIPT)],
    # With no candidate run, the first error other than ENOENT/ENOTDIR, else the last.
    "eacces-then-enoexec": [prog(SCRIPT, 0o644), prog(ENOEXEC_BYTES)],
    "enoexec-then-eacces": [prog(ENOEXEC_BYTES), prog(SCRIPT, 0o644)],
    "enotdir-then-enoent": [A_FILE, EMPTY_DIR],
    "enoent-then-enotdir": [EMPTY_DIR, A_FILE],
    "enotdir-then-eacces": [A_FILE, prog(SCRIPT, 0o644)],
    # The path exec is given, as the script sees it in $0: Popen joins with os.path.join.
    "trailing-slash": [prog(SCRIPT, suffix="/")],
    "double-slash": [prog(SCRIPT, suffix="//")],
    # An empty entry is the working directory (here the cwd given).
    "empty-entry-is-cwd": [EMPTY_ENTRY, EMPTY_DIR],
}


def make_path(root, entries):
    parts = []
    for i, (kind, *rest) in enumerate(entries):
        name = f"d{i}"
        if kind == "prog":
            content, mode, suffix = rest
            parts.append(str(path_dir(root, name, content, mode)) + suffix)
        elif kind == "dir-prog":
            (path_dir(root, name) / "prog").mkdir()
            parts.append(str(root / name))
        elif kind == "file":
            (root / name).write_bytes(b"")
            parts.append(str(root / name))
        elif kind == "empty":
            parts.append(str(path_dir(root, name)))
        else:
            parts.append("")
    return ":".join(parts)


@pytest.mark.parametrize("where", ["env", "own-environ"])
@pytest.mark.parametrize("scenario", list(PATH_SCENARIOS))
def test_path_search_as_popen(loop, tmp_path, monkeypatch, scenario, where):
    path = make_path(tmp_path, PATH_SCENARIOS[scenario])
    cwd = tmp_path / "cwd"
    path_dir(tmp_path, "cwd", SCRIPT)
    kwargs = {"cwd": cwd}
    if where == "env":
        kwargs["env"] = {"PATH": path}
    else:
        # The search then uses this process's PATH (the case glibc's posix_spawnp covers).
        monkeypatch.setenv("PATH", path)
    expected = popen_outcome(["prog"], **kwargs)
    result = run(loop, loop_outcome(["prog"], **kwargs))
    monkeypatch.undo()
    assert result == expected


# -- bad arguments: the errors subprocess.Popen raises ---------------------------------------


class FilenoOnly:
    """A stdio argument with only a fileno() method."""

    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


class Fspath:
    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


# (id, a function of (closed fd, tmp_path) -> (args, kwargs))
BAD_SPAWN_ARGUMENTS = [
    # stdin/stdout/stderr: a negative fd other than the constants, a closed fd, not a C int
    ("stdin=-4", lambda fd, tmp: (["true"], {"stdin": -4})),
    ("stdout=-4", lambda fd, tmp: (["true"], {"stdout": -4})),
    ("stderr=-4", lambda fd, tmp: (["true"], {"stderr": -4})),
    ("stdin=STDOUT", lambda fd, tmp: (["true"], {"stdin": STDOUT})),
    ("stdout=STDOUT", lambda fd, tmp: (["true"], {"stdout": STDOUT})),
    ("stdin-fileno=-4", lambda fd, tmp: (["true"], {"stdin": FilenoOnly(-4)})),
    ("stdin-fileno=-1", lambda fd, tmp: (["true"], {"stdin": FilenoOnly(-1)})),
    ("stdin=-4-with-cwd", lambda fd, tmp: (["true"], {"stdin": -4, "cwd": tmp})),
    ("stdin-closed", lambda fd, tmp: (["true"], {"stdin": fd})),
    ("stderr-closed", lambda fd, tmp: (["true"], {"stderr": fd})),
    ("stdin-closed-with-cwd", lambda fd, tmp: (["true"], {"stdin": fd, "cwd": tmp})),
    ("stdin=INT_MAX", lambda fd, tmp: (["true"], {"stdin": 2**31 - 1})),
    # Popen starts these with os.posix_spawn (on 3.11 with close_fds=False only), which
    # names the program in the error of a failed dup2.
    ("stdin-closed-program-path", lambda fd, tmp: (["/bin/true"], {"stdin": fd})),
    (
        "stdin-closed-program-path-no-close_fds",
        lambda fd, tmp: (["/bin/true"], {"stdin": fd, "close_fds": False}),
    ),
    (
        "stdout=INT_MAX-program-path-no-close_fds",
        lambda fd, tmp: (["/bin/true"], {"stdout": 2**31 - 1, "close_fds": False}),
    ),
    ("stdin=INT_MAX+1", lambda fd, tmp: (["true"], {"stdin": 2**31})),
    ("stdin=INT_MIN-1", lambda fd, tmp: (["true"], {"stdin": -(2**31) - 1})),
    ("stdin=2**70", lambda fd, tmp: (["true"], {"stdin": 2**70})),
    ("stdout=-2**70", lambda fd, tmp: (["true"], {"stdout": -(2**70)})),
    ("stdin-fileno=str", lambda fd, tmp: (["true"], {"stdin": FilenoOnly("0")})),
    ("stdin=1.5", lambda fd, tmp: (["true"], {"stdin": 1.5})),
    ("stdin=True", lambda fd, tmp: (["true"], {"stdin": True})),
    # pass_fds
    ("pass_fds=-1", lambda fd, tmp: (["true"], {"pass_fds": (-1,)})),
    ("pass_fds=INT_MAX+1", lambda fd, tmp: (["true"], {"pass_fds": (2**31,)})),
    ("pass_fds=2**70", lambda fd, tmp: (["true"], {"pass_fds": (2**70,)})),
    ("pass_fds-closed", lambda fd, tmp: (["true"], {"pass_fds": (fd,)})),
    ("pass_fds-closed-with-cwd", lambda fd, tmp: (["true"], {"pass_fds": (fd,), "cwd": tmp})),
    ("pass_fds=str", lambda fd, tmp: (["true"], {"pass_fds": ("x",)})),
    ("pass_fds=1.5", lambda fd, tmp: (["true"], {"pass_fds": (1.5,)})),
    ("pass_fds-not-iterable", lambda fd, tmp: (["true"], {"pass_fds": 3})),
    # cwd
    ("cwd=''", lambda fd, tmp: (["true"], {"cwd": ""})),
    ("cwd=b''", lambda fd, tmp: (["true"], {"cwd": b""})),
    ("cwd-missing-bytes", lambda fd, tmp: (["true"], {"cwd": os.fsencode(tmp / "missing")})),
    ("cwd-missing-fspath", lambda fd, tmp: (["true"], {"cwd": Fspath(str(tmp / "missing"))})),
    ("cwd-a-file", lambda fd, tmp: (["true"], {"cwd": tmp / "file"})),
    ("cwd-too-long", lambda fd, tmp: (["true"], {"cwd": "/" + "x" * 5000})),
    ("cwd=1", lambda fd, tmp: (["true"], {"cwd": 1})),
    ("cwd-nul", lambda fd, tmp: (["true"], {"cwd": "a\0b"})),
    # env
    ("env-int-key", lambda fd, tmp: (["true"], {"env": {1: "x"}})),
    ("env-int-value", lambda fd, tmp: (["true"], {"env": {"A": 1}})),
    ("env-key-with-=", lambda fd, tmp: (["true"], {"env": {"A=B": "x"}})),
    ("env-key-=", lambda fd, tmp: (["true"], {"env": {"=": "x"}})),
    ("env-empty-key", lambda fd, tmp: (["true"], {"env": {"": "x"}})),
    ("env-nul-in-key", lambda fd, tmp: (["true"], {"env": {"A\0": "x"}})),
    ("env-nul-in-value", lambda fd, tmp: (["true"], {"env": {"A": "x\0"}})),
    ("env-a-list", lambda fd, tmp: (["true"], {"env": [("A", "x")]})),
    ("env-PATH-twice", lambda fd, tmp: (["true"], {"env": {"PATH": "/bin", b"PATH": b"/bin"}})),
    # args and executable
    ("program-nul", lambda fd, tmp: (["true\0"], {})),
    ("arg-nul", lambda fd, tmp: (["true", "a\0"], {})),
    ("arg-int", lambda fd, tmp: (["true", 1], {})),
    ("program-int", lambda fd, tmp: ([1], {})),
    ("program-empty", lambda fd, tmp: ([""], {})),
    ("program-empty-bytes", lambda fd, tmp: ([b""], {})),
    ("program-fspath", lambda fd, tmp: ([Fspath("fastloop-no-such-program")], {})),
    ("program-under-a-file", lambda fd, tmp: ([str(tmp / "file" / "x")], {})),
    ("program-too-long", lambda fd, tmp: (["x" * 300], {})),
    ("program-a-directory", lambda fd, tmp: ([str(tmp)], {})),
    ("executable-nul", lambda fd, tmp: (["true"], {"executable": "a\0"})),
    ("executable-int", lambda fd, tmp: (["true"], {"executable": 1})),
    ("executable-empty", lambda fd, tmp: (["true"], {"executable": ""})),
    # process_group
    ("process_group=2**40", lambda fd, tmp: (["true"], {"process_group": 2**40})),
    ("process_group=str", lambda fd, tmp: (["true"], {"process_group": "0"})),
    ("process_group-not-a-group", lambda fd, tmp: (["true"], {"process_group": 2**31 - 1})),
]


def closed_fd():
    """An fd number below the fd limit that is not open (nor soon to be)."""
    limit = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)
    for fd in range(limit - 1, 2, -1):
        try:
            os.fstat(fd)
        except OSError:
            return fd
    raise AssertionError("no closed fd")


@pytest.mark.parametrize("name, make", BAD_SPAWN_ARGUMENTS, ids=[i for i, _ in BAD_SPAWN_ARGUMENTS])
def test_bad_spawn_arguments_raise_as_popen(loop, loop_name, tmp_path, name, make):
    (tmp_path / "file").write_bytes(b"")
    args, kwargs = make(closed_fd(), tmp_path)
    expected = popen_outcome(args, **kwargs)
    if name == "process_group=2**40" and expected[0] == "exit" and loop_name == "fastloop":
        # Popen on 3.12 truncates the process group to 32 bits (2**40 becomes 0);
        # fastloop refuses it as Popen on 3.11 and 3.13 do (README, known differences).
        expected = (OverflowError, "Python int too large to convert to C int")

    async def main():
        before = open_fds()
        result = await loop_outcome(args, **kwargs)
        # A refused spawn leaves no fd behind (a child that ran may still have its
        # transport's pipes open for an iteration).
        return result, open_fds() - before if result[0] != "exit" else set()

    assert run(loop, main()) == (expected, set())


def test_no_program_raises_type_error(loop):
    async def main():
        errors = []
        for call in (lambda: loop.subprocess_exec(SubRecorder), asyncio.create_subprocess_exec):
            with pytest.raises(TypeError) as info:
                await call()
            errors.append(info.type)
        return errors

    assert run(loop, main()) == [TypeError, TypeError]


# -- the low-level SubprocessTransport / SubprocessProtocol --------------------------------


def test_protocol_callbacks_and_transport_accessors(loop):
    async def main():
        tr, pr = await loop.subprocess_exec(
            SubRecorder,
            "/bin/sh",
            "-c",
            'read x; echo "out:$x"; echo err >&2; exit 3',
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        try:
            assert pr.transport is tr and pr.events == ["made"]
            popen = tr.get_extra_info("subprocess")
            info = dict(
                pid_type=type(tr.get_pid()),
                pid_matches=tr.get_pid() == popen.pid,
                running_rc=tr.get_returncode(),
                pipes=[
                    tr.get_pipe_transport(0).get_extra_info("pipe") is popen.stdin,
                    tr.get_pipe_transport(1).get_extra_info("pipe") is popen.stdout,
                    tr.get_pipe_transport(2).get_extra_info("pipe") is popen.stderr,
                ],
                bad_fd=tr.get_pipe_transport(3),
                protocol=tr.get_protocol() is pr,
            )
            tr.get_pipe_transport(0).write(b"hi\n")
            tr.get_pipe_transport(0).close()
            info["lost"] = await asyncio.wait_for(pr.lost, 10)
            info["rc"] = tr.get_returncode()
            info["rc_at_exit"] = pr.returncode_at_exit
            info["data"] = {fd: bytes(d) for fd, d in pr.data.items()}
            return info, pr.events
        finally:
            tr.close()

    info, events = run(loop, main())
    assert info == dict(
        pid_type=int,
        pid_matches=True,
        running_rc=None,
        pipes=[True, True, True],
        bad_fd=None,
        protocol=True,
        lost=None,
        rc=3,
        rc_at_exit=3,
        data={1: b"out:hi\n", 2: b"err\n"},
    )
    # What asyncio guarantees: connection_made first; a pipe's data before its
    # pipe_connection_lost; connection_lost last, after process_exited and every
    # pipe_connection_lost. (process_exited and the pipes' ends may come in any order.)
    assert events[0] == "made"
    assert events[-1] == ("lost", None)
    middle = events[1:-1]
    assert middle.count("exited") == 1
    for fd in (0, 1, 2):
        assert middle.count(("pipe_lost", fd, None)) == 1
    for fd in (1, 2):
        assert middle.index(("data", fd)) < middle.index(("pipe_lost", fd, None))
    assert len(middle) == 6, events


def test_get_pipe_transport_none_for_non_pipes(loop):
    async def main():
        tr, pr = await loop.subprocess_exec(
            SubRecorder, "/bin/sh", "-c", "echo only-out", stdin=DEVNULL, stderr=DEVNULL
        )
        try:
            pipes = [tr.get_pipe_transport(fd) for fd in (0, 1, 2)]
            kinds = [p is None for p in pipes]
            assert isinstance(pipes[1], asyncio.ReadTransport)
            await asyncio.wait_for(pr.lost, 10)
            return kinds, pr.events, bytes(pr.data[1]), tr.get_returncode()
        finally:
            tr.close()

    kinds, events, out, rc = run(loop, main())
    assert (kinds, out, rc) == ([True, False, True], b"only-out\n", 0)
    assert events[0] == "made" and events[-1] == ("lost", None)
    assert sorted(map(str, events[1:-1])) == sorted(
        map(str, [("data", 1), ("pipe_lost", 1, None), "exited"])
    )
    assert events.index(("data", 1)) < events.index(("pipe_lost", 1, None))


def test_subprocess_shell_protocol(loop):
    async def main():
        tr, pr = await loop.subprocess_shell(SubRecorder, "echo via-shell; exit 9", stdin=None)
        try:
            await asyncio.wait_for(pr.lost, 10)
            return tr.get_returncode(), bytes(pr.data[1]), tr.get_pipe_transport(0)
        finally:
            tr.close()

    assert run(loop, main()) == (9, b"via-shell\n", None)


def test_transport_close_kills_running_child(loop):
    async def main():
        # stdin, stdout and stderr are pipes (subprocess_exec's defaults).
        tr, pr = await loop.subprocess_exec(SubRecorder, "sleep", "30")
        try:
            assert tr.get_returncode() is None
            assert not tr.is_closing()
            tr.close()
            assert tr.is_closing()
            lost = await asyncio.wait_for(pr.lost, 10)
            return lost, tr.get_returncode(), pr.returncode_at_exit, pr.events
        finally:
            tr.close()

    lost, rc, rc_at_exit, events = run(loop, main())
    assert (lost, rc, rc_at_exit) == (None, -signal.SIGKILL, -signal.SIGKILL)
    assert events[0] == "made" and events[-1] == ("lost", None)
    # close() closed the three pipes, then the SIGKILLed child's exit arrived.
    assert sorted(map(str, events[1:-1])) == sorted(
        map(str, ["exited", ("pipe_lost", 0, None), ("pipe_lost", 1, None), ("pipe_lost", 2, None)])
    )


# -- exits while the loop is busy, and a storm of them ---------------------------------------


def test_exit_collected_while_a_callback_blocks(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "echo bye; exit 7", stdout=PIPE
        )
        seen = []

        def block():
            # The child exits while this callback holds the loop.
            time.sleep(0.3)
            seen.append(has_exited(proc.pid))

        loop.call_soon(block)
        await asyncio.sleep(0)
        out, _ = await proc.communicate()
        return out, proc.returncode, seen

    assert run(loop, main()) == (b"bye\n", 7, [True])


def test_exit_collected_while_the_loop_is_not_running(loop):
    proc = run(loop, asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 8", stdout=PIPE))
    time.sleep(0.3)  # the child exits while nothing runs the loop
    assert has_exited(proc.pid)
    assert run(loop, proc.communicate()) == (b"", None)
    assert proc.returncode == 8


def has_exited(pid):
    """Whether our child ``pid`` has exited: a zombie now, or reaped already (asyncio's
    watcher thread may reap it at once). waitid(WNOWAIT) leaves the zombie alone."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def unreaped_children(pids):
    """The pids among ``pids`` that are still children of this process (running or
    zombies), found with waitid(WNOWAIT), which reaps nothing."""
    left = []
    for pid in pids:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            continue
        left.append(pid)
    return left


@pytest.mark.timeout(60)
def test_spawn_storm_collects_every_exit_code(loop):
    n = 500

    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            f"echo {i}; exit {i % 256}",
            stdin=DEVNULL,
            stdout=PIPE,
            stderr=DEVNULL,
        )
        out, _ = await proc.communicate()
        return proc.pid, proc.returncode, out

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    t0 = time.monotonic()
    results = run(loop, main(), timeout=50)
    elapsed = time.monotonic() - t0
    assert [(rc, out) for _, rc, out in results] == [(i % 256, f"{i}\n".encode()) for i in range(n)]
    pids = [pid for pid, _, _ in results]
    assert len(set(pids)) == n
    # Every one was reaped: none is left as a zombie. (Checked pid by pid, not with
    # waitpid(-1): a child of some other test must not make this one fail.)
    assert unreaped_children(pids) == []
    assert elapsed < 30, f"{n} processes took {elapsed:.1f}s"


# -- bulk data and flow control ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_64mib_round_trip_through_cat(loop):
    data = pattern(64 * MiB, seed=11)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        try:

            async def feed():
                view = memoryview(data)
                for off in range(0, len(data), MiB):
                    proc.stdin.write(view[off : off + MiB])
                    await proc.stdin.drain()
                proc.stdin.close()
                await proc.stdin.wait_closed()

            async def consume():
                h = hashlib.sha256()
                n = 0
                while chunk := await proc.stdout.read(MiB):
                    h.update(chunk)
                    n += len(chunk)
                return n, h.hexdigest()

            _, received = await asyncio.gather(feed(), consume())
            return received, await proc.wait()
        finally:
            await kill_and_wait(proc)

    assert run(loop, main(), timeout=50) == ((len(data), sha256(data)), 0)


@pytest.mark.timeout(60)
def test_64mib_communicate(loop):
    data = pattern(64 * MiB, seed=5)

    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        try:
            out, err = await proc.communicate(data)
            return len(out), sha256(out), err, proc.returncode
        finally:
            await kill_and_wait(proc)

    assert run(loop, main(), timeout=50) == (len(data), sha256(data), None, 0)


BOTH_STREAMS = """\
import sys
out, err = sys.stdout.buffer, sys.stderr.buffer
for i in range(64):
    out.write(bytes([i]) * 65536)
    out.flush()
    err.write(bytes([255 - i]) * 65536)
    err.flush()
"""


@pytest.mark.parametrize("how", ["gather", "communicate"])
def test_large_stdout_and_stderr_together(loop, how):
    expected_out = b"".join(bytes([i]) * 65536 for i in range(64))
    expected_err = b"".join(bytes([255 - i]) * 65536 for i in range(64))

    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", BOTH_STREAMS, stdout=PIPE, stderr=PIPE
        )
        try:
            if how == "gather":
                out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
            else:
                out, err = await proc.communicate()
            return out, err, await proc.wait()
        finally:
            await kill_and_wait(proc)

    out, err, rc = run(loop, main(), timeout=20)
    assert rc == 0
    assert (len(out), sha256(out)) == (len(expected_out), sha256(expected_out))
    assert (len(err), sha256(err)) == (len(expected_err), sha256(expected_err))


def test_stdin_drain_blocks_until_the_reader_dies(loop):
    async def main():
        # sleep never reads its stdin: the pipe fills, then the transport's buffer.
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdin=PIPE)
        try:
            proc.stdin.write(b"x" * (4 * MiB))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(proc.stdin.drain(), 0.3)
            buffered = proc.stdin.transport.get_write_buffer_size()
            drain = asyncio.ensure_future(proc.stdin.drain())
            await asyncio.sleep(0.05)
            assert not drain.done()
            proc.kill()
            errors = []
            try:
                await asyncio.wait_for(drain, 10)
            except Exception as exc:
                errors.append(type(exc))
            # The next drain() finds the connection lost.
            try:
                await proc.stdin.drain()
            except Exception as exc:
                errors.append(type(exc))
            try:
                await proc.stdin.wait_closed()
            except Exception as exc:
                errors.append(type(exc))
            return buffered, errors, await proc.wait()
        finally:
            await kill_and_wait(proc)

    buffered, errors, rc = run(loop, main())
    assert 0 < buffered < 4 * MiB
    assert errors == [BrokenPipeError, ConnectionResetError, BrokenPipeError]
    assert rc == -signal.SIGKILL


# ---- a child watcher installed in the policy (Python < 3.14) ------------------------------

# asyncio's loop starts a child inside `with watcher:` of the policy's child watcher. Up
# to 3.11 it asks what the watcher's __enter__ returned whether it is active and hands it
# the pid; from 3.12 it asks the watcher itself (unix_events._UnixSelectorEventLoop.
# _make_subprocess_transport). Python 3.14 has no child watchers.
ASKS_THE_WATCHER_ITSELF = sys.version_info >= (3, 12)


def make_child_watcher(log, active):
    """A child watcher (waiting for its pids in threads) whose __enter__ returns another
    one. ``active`` names the one of the two whose is_active() is true."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # subclassing it, from 3.12

        class Watcher(asyncio.AbstractChildWatcher):
            def __init__(self, name, entered=None):
                self.name, self.entered = name, entered

            def is_active(self):
                log.append((self.name, "is_active"))
                return self.name == active

            def add_child_handler(self, pid, callback, *args):
                log.append((self.name, "add_child_handler"))

                def wait():
                    _, status = os.waitpid(pid, 0)
                    callback(pid, os.waitstatus_to_exitcode(status), *args)

                threading.Thread(target=wait, daemon=True).start()

            def remove_child_handler(self, pid):
                return False

            def attach_loop(self, loop):
                pass

            def close(self):
                pass

            def __enter__(self):
                return self if self.entered is None else self.entered

            def __exit__(self, *exc):
                pass

    return Watcher("watcher", Watcher("entered"))


@pytest.mark.skipif(
    not hasattr(asyncio, "AbstractChildWatcher"), reason="no child watchers (Python 3.14+)"
)
@pytest.mark.parametrize("active", ["watcher", "entered"])
def test_child_watcher_of_the_policy_is_asked_as_asyncio_asks(loop, active):
    log = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.get_event_loop_policy().set_child_watcher(make_child_watcher(log, active))
    asked = "watcher" if ASKS_THE_WATCHER_ITSELF else "entered"

    async def main():
        if active != asked:
            with pytest.raises(RuntimeError, match="get_child_watcher.. is not activated"):
                await asyncio.create_subprocess_exec(PY, "-c", "pass")
            return None
        proc = await asyncio.create_subprocess_exec(PY, "-c", "raise SystemExit(3)")
        return await proc.wait()

    if active == asked:
        assert run(loop, main()) == 3
        assert log == [(asked, "is_active"), (asked, "add_child_handler")]
    else:
        assert run(loop, main()) is None
        assert log == [(asked, "is_active")]
