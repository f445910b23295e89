"""add_signal_handler / remove_signal_handler, and Ctrl-C (SIGINT) while the loop
sleeps in the kernel, checked in child processes."""

import contextvars
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from .conftest import new_loop

# ---------------------------------------------------------------------------
# In-process: add_signal_handler / remove_signal_handler


def run_until(loop, predicate, timeout=5.0):
    deadline = loop.time() + timeout

    def check():
        if predicate() or loop.time() > deadline:
            loop.stop()
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    loop.run_forever()
    assert predicate(), "condition not reached in time"


@pytest.mark.timeout(10)
def test_signal_handler_runs_with_args(loop):
    got = []

    def handler(*args):
        got.append((args, loop.is_running()))

    def send():
        os.kill(os.getpid(), signal.SIGUSR1)
        # The handler runs later, as a loop callback, not inside os.kill().
        got.append("after kill")

    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 2)
    loop.call_soon(send)
    run_until(loop, lambda: len(got) == 2)
    assert got == ["after kill", (("a", 2), True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


@pytest.mark.timeout(10)
def test_signal_handler_runs_each_time(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    for n in range(1, 4):
        os.kill(os.getpid(), signal.SIGUSR1)
        run_until(loop, lambda n=n: len(got) == n)
    assert got == [1, 1, 1]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


@pytest.mark.timeout(20)
def test_signal_wakes_a_sleeping_loop(loop):
    far = loop.call_later(10, loop.stop)
    woke = []
    sent = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (woke.append(time.monotonic()), loop.stop()))

    def sender():
        time.sleep(0.1)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=sender)
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    far.cancel()
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert woke and woke[0] - sent[0] < 1.0


@pytest.mark.timeout(10)
def test_replacing_a_signal_handler(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "first")
    loop.add_signal_handler(signal.SIGUSR1, got.append, "second")
    os.kill(os.getpid(), signal.SIGUSR1)
    run_until(loop, lambda: got)
    assert got == ["second"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True


@pytest.mark.timeout(10)
def test_two_signals(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
    loop.add_signal_handler(signal.SIGUSR2, got.append, "usr2")
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGUSR1)
    run_until(loop, lambda: len(got) == 2)
    assert sorted(got) == ["usr1", "usr2"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    # The other one still works.
    got.clear()
    os.kill(os.getpid(), signal.SIGUSR2)
    run_until(loop, lambda: got)
    assert got == ["usr2"]
    assert loop.remove_signal_handler(signal.SIGUSR2) is True


@pytest.mark.timeout(10)
def test_signal_handler_exception_goes_to_handler(loop, exc_handler_calls):
    def bad():
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, bad)
    os.kill(os.getpid(), signal.SIGUSR1)
    run_until(loop, lambda: exc_handler_calls)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], ValueError)
    exc_handler_calls.clear()


def test_remove_signal_handler_restores_default(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_remove_sigint_handler_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, print)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.add_signal_handler(signal.SIGUSR2, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


@pytest.mark.parametrize("method", ["add_signal_handler", "remove_signal_handler"])
@pytest.mark.parametrize("sig", [0, -1, 1000, signal.NSIG])
def test_invalid_signal_number(loop, method, sig):
    args = (print,) if method == "add_signal_handler" else ()
    with pytest.raises(ValueError, match=f"invalid signal number {sig}"):
        getattr(loop, method)(sig, *args)


@pytest.mark.parametrize("method", ["add_signal_handler", "remove_signal_handler"])
@pytest.mark.parametrize("sig", ["SIGUSR1", 10.0, None], ids=["str", "float", "none"])
def test_signal_not_an_int(loop, method, sig):
    args = (print,) if method == "add_signal_handler" else ()
    with pytest.raises(TypeError, match="sig must be an int"):
        getattr(loop, method)(sig, *args)


def test_signal_enum_is_accepted(loop):
    assert isinstance(signal.SIGUSR1, signal.Signals)
    loop.add_signal_handler(signal.Signals.SIGUSR1, print)
    assert loop.remove_signal_handler(int(signal.SIGUSR1)) is True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_uncatchable_signal(loop, sig):
    with pytest.raises(RuntimeError, match=f"sig {int(sig)} cannot be caught"):
        loop.add_signal_handler(sig, print)
    # Nothing was left registered (teardown also checks the wakeup fd).
    assert loop.remove_signal_handler(sig) is False


def test_coroutine_function_as_signal_handler(loop):
    async def handler():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, handler)
    coro = handler()
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_signal_handler_outside_the_main_thread(loop_name):
    errors = []

    def worker():
        lp = new_loop(loop_name)
        try:
            lp.add_signal_handler(signal.SIGUSR1, print)
        except RuntimeError as e:
            errors.append(e)
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert len(errors) == 1
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


@pytest.mark.timeout(20)
def test_plain_python_signal_handler_runs_while_the_loop_sleeps(loop):
    # A handler installed with signal.signal() (not through the loop), as servers
    # do for SIGTERM, runs promptly while the loop sleeps in the kernel.
    far = loop.call_later(10, loop.stop)
    ran = []

    def py_handler(signum, frame):
        ran.append(time.monotonic())
        loop.call_soon_threadsafe(loop.stop)

    main = threading.get_ident()
    sent = []

    def sender():
        time.sleep(0.1)
        sent.append(time.monotonic())
        # Aimed at the main thread, where Python runs signal handlers.
        signal.pthread_kill(main, signal.SIGUSR2)

    old = signal.signal(signal.SIGUSR2, py_handler)
    t = threading.Thread(target=sender)
    try:
        t.start()
        loop.run_forever()
    finally:
        t.join()
        signal.signal(signal.SIGUSR2, old)
    far.cancel()
    assert ran and ran[0] - sent[0] < 1.0


def test_running_leaves_python_signal_state_alone(loop):
    # asyncio.Runner installs its SIGINT handler only if SIGINT still has
    # default_int_handler; a user's own wakeup fd must survive running the loop.
    r, w = socket.socketpair()
    w.setblocking(False)
    user_fd = w.fileno()
    old_fd = signal.set_wakeup_fd(user_fd)
    try:
        seen = []
        loop.call_soon(lambda: seen.append(signal.getsignal(signal.SIGINT)))
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [signal.default_int_handler]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        restored = signal.set_wakeup_fd(old_fd)
        r.close()
        w.close()
    assert restored == user_fd


@pytest.mark.timeout(10)
def test_signal_handler_runs_in_a_copy_of_the_context_at_registration(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def handler():
        seen.append(var.get())
        var.set("changed by handler")

    token = var.set("at add_signal_handler")
    try:
        loop.add_signal_handler(signal.SIGUSR1, handler)
        var.set("later")
        os.kill(os.getpid(), signal.SIGUSR1)
        run_until(loop, lambda: seen)
        assert seen == ["at add_signal_handler"]
        assert var.get() == "later"
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    finally:
        var.reset(token)


# ---------------------------------------------------------------------------
# Ctrl-C in a child process

CHILD_PRELUDE = """
import asyncio, signal, sys, time
LOOP = sys.argv[1]
if LOOP == "fastloop":
    import fastloop

def new_loop():
    return fastloop.new_event_loop() if LOOP == "fastloop" else asyncio.new_event_loop()

def say(*words):
    print(*words, flush=True)
"""

CHILD_SCRIPTS = {
    # asyncio.run under the loop's policy.
    "run_under_policy": """
if LOOP == "fastloop":
    asyncio.set_event_loop_policy(fastloop.EventLoopPolicy())

async def main():
    lp = asyncio.get_running_loop()
    say("ready", type(lp).__module__)
    await asyncio.sleep(3600)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    # asyncio.Runner with the loop factory (what fastloop.run is).
    "runner_loop_factory": """
async def main():
    lp = asyncio.get_running_loop()
    say("ready", type(lp).__module__)
    await asyncio.sleep(3600)

try:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    "run_forever": """
lp = new_loop()
lp.call_soon(say, "ready", type(lp).__module__)
try:
    lp.run_forever()
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    lp.close()
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    "run_until_complete": """
lp = new_loop()
lp.call_soon(say, "ready", type(lp).__module__)
try:
    lp.run_until_complete(asyncio.sleep(3600))
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    lp.close()
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    # The loop is busy running callbacks, not sleeping.
    "run_forever_busy": """
lp = new_loop()
first = True

def spin():
    global first
    if first:
        first = False
        say("ready", type(lp).__module__)
    lp.call_soon(spin)

lp.call_soon(spin)
try:
    lp.run_forever()
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    lp.close()
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    # asyncio.run whose main task keeps yielding (sleep(0)) instead of sleeping.
    "run_busy": """
if LOOP == "fastloop":
    asyncio.set_event_loop_policy(fastloop.EventLoopPolicy())

async def main():
    lp = asyncio.get_running_loop()
    say("ready", type(lp).__module__)
    while True:
        await asyncio.sleep(0)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    say("KeyboardInterrupt")
    sys.exit(0)
say("no KeyboardInterrupt")
""",
    "sigint_handler": """
lp = new_loop()
count = 0

def on_sigint():
    global count
    count += 1
    say("handled", count)

lp.add_signal_handler(signal.SIGINT, on_sigint)
lp.add_signal_handler(signal.SIGUSR1, lp.stop)
lp.call_soon(say, "ready", type(lp).__module__)
lp.run_forever()
assert lp.remove_signal_handler(signal.SIGINT)
assert lp.remove_signal_handler(signal.SIGUSR1)
lp.close()
say("stopped", count)
""",
}


class Child:
    """A child Python process whose stdout lines are read with a deadline."""

    def __init__(self, name, loop_name):
        script = CHILD_PRELUDE + textwrap.dedent(CHILD_SCRIPTS[name])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, loop_name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.buf = b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def kill(self, sig):
        self.proc.send_signal(sig)

    def finish(self, timeout=10):
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            stderr = self.proc.stderr.read().decode()
            self.proc.stdout.close()
            self.proc.stderr.close()
        return self.proc.returncode, stderr

    def expect_ready(self, loop_name):
        line = self.readline(20)
        if line is None:
            _, stderr = self.finish(1)
            pytest.fail(f"child never printed 'ready'; stderr:\n{stderr}")
        word, module = line.split()
        assert word == "ready"
        # The child really runs on the loop under test.
        assert module.split(".")[0] == loop_name, module


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "mode",
    [
        "run_under_policy",
        "runner_loop_factory",
        "run_forever",
        "run_until_complete",
        "run_forever_busy",
        "run_busy",
    ],
)
def test_ctrl_c_raises_keyboard_interrupt_at_once(loop_name, mode):
    child = Child(mode, loop_name)
    child.expect_ready(loop_name)
    # Let the loop go to sleep in the kernel (its only timer is an hour away).
    time.sleep(0.2)
    t0 = time.monotonic()
    child.kill(signal.SIGINT)
    line = child.readline(5)
    elapsed = time.monotonic() - t0
    rc, stderr = child.finish()
    assert line == "KeyboardInterrupt", f"child said {line!r}; stderr:\n{stderr}"
    assert elapsed < 1.0
    assert rc == 0, stderr


@pytest.mark.timeout(30)
def test_ctrl_c_runs_the_loops_sigint_handler_instead(loop_name):
    child = Child("sigint_handler", loop_name)
    child.expect_ready(loop_name)
    for n in (1, 2):
        time.sleep(0.1)
        t0 = time.monotonic()
        child.kill(signal.SIGINT)
        line = child.readline(5)
        assert line == f"handled {n}"
        assert time.monotonic() - t0 < 1.0
    # Still running: the handler did not stop it, no KeyboardInterrupt.
    time.sleep(0.2)
    assert child.proc.poll() is None
    child.kill(signal.SIGUSR1)
    line = child.readline(5)
    rc, stderr = child.finish()
    assert line == "stopped 2", stderr
    assert rc == 0, stderr
    assert "KeyboardInterrupt" not in stderr
