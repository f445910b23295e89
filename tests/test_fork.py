"""os.fork() in a process that uses the loop under test.

Each test runs a script in a fresh interpreter (so forking never disturbs the pytest
process and its threads). The script forks; the child makes a new loop of the same
kind, runs a coroutine with a sleep and a subprocess (or a signal handler), and exits
with a status the parent checks. Covered: forking after a loop ran and was closed, or
while one is still open with an fd watched; forking from inside a running loop's
callback, the child calling asyncio.run() under the loop's policy and the parent's loop
working on afterwards (socket reads, timers); SIGUSR1 handlers of a parent loop and of
the child's new loop, each receiving its own signals.
"""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

PRELUDE = """
import asyncio, os, select, signal, socket, sys, traceback
LOOP = sys.argv[1]
if LOOP == "fastloop":
    import fastloop

def new_loop():
    return fastloop.new_event_loop() if LOOP == "fastloop" else asyncio.new_event_loop()

def kind(lp):
    return type(lp).__module__.split(".")[0]

def say(*words):
    print(*words, flush=True)

def fork_child(body):
    # Run body() in a forked child, which always leaves through os._exit: status 7
    # if body() returned, 1 if it raised. Returns the child's pid.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 7
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    return pid

def exit_code(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

async def child_main():
    # A sleep and a subprocess on the child's new loop.
    lp = asyncio.get_running_loop()
    t0 = lp.time()
    await asyncio.sleep(0.05)
    slept = lp.time() - t0 >= 0.04
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", "echo from-grandchild; exit 3", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return kind(lp), slept, out.decode().strip(), proc.returncode
"""

SCRIPTS = {
    # A loop ran (timers, a subprocess) and was closed, then the process forks.
    "after_closed_loop": """
lp = new_loop()
say("parent", *lp.run_until_complete(child_main()))
lp.close()

def child():
    clp = new_loop()
    try:
        say("child", *clp.run_until_complete(child_main()))
    finally:
        clp.close()

say("child exit", exit_code(fork_child(child)))
""",
    # A loop is still open, with an fd watched, when the process forks; the child
    # leaves it alone and makes its own. The parent's loop works on afterwards.
    "with_open_loop": """
lp = new_loop()
asyncio.set_event_loop(lp)
a, b = socket.socketpair()
got = []
lp.add_reader(a, lambda: got.append(a.recv(100)))
say("parent", *lp.run_until_complete(child_main()))

def child():
    clp = new_loop()
    try:
        say("child", *clp.run_until_complete(child_main()))
    finally:
        clp.close()

say("child exit", exit_code(fork_child(child)))

async def after():
    b.send(b"still watched")
    while not got:
        await asyncio.sleep(0.005)
    fired = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.02, fired.set_result, "timer fired")
    return got[0].decode(), await fired

say("parent after", *lp.run_until_complete(asyncio.wait_for(after(), 5)))
lp.remove_reader(a)
lp.close()
a.close()
b.close()
""",
    # The fork happens inside a callback of the running loop; the child runs
    # asyncio.run() under the policy of the loop kind.
    "inside_callback": """
lp = new_loop()
asyncio.set_event_loop(lp)
a, b = socket.socketpair()

def child():
    if LOOP == "fastloop":
        asyncio.set_event_loop_policy(fastloop.EventLoopPolicy())
    say("child", *asyncio.run(child_main()))

async def main():
    loop = asyncio.get_running_loop()
    forked = loop.create_future()
    loop.call_soon(lambda: forked.set_result(fork_child(child)))
    pid = await forked
    say("child exit", await loop.run_in_executor(None, exit_code, pid))
    reader, writer = await asyncio.open_connection(sock=a)
    b.sendall(b"ping\\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    t0 = loop.time()
    fired = loop.create_future()
    loop.call_later(0.05, fired.set_result, None)
    await asyncio.wait_for(fired, 5)
    say("parent after", kind(loop), line.decode().strip(), loop.time() - t0 >= 0.04)
    writer.close()
    await writer.wait_closed()

lp.run_until_complete(main())
lp.run_until_complete(lp.shutdown_default_executor())
lp.close()
b.close()
""",
    # The parent's loop handles SIGUSR1; the child's new loop installs its own handler
    # and gets the signals sent to the child, the parent's loop those sent to it.
    "signal_handlers": """
lp = new_loop()
parent_got = []
lp.add_signal_handler(signal.SIGUSR1, parent_got.append, "parent handler")
lp.run_until_complete(asyncio.sleep(0.01))
ready_r, ready_w = os.pipe()

def child():
    os.close(ready_r)
    clp = new_loop()

    async def cmain():
        loop = asyncio.get_running_loop()
        got = []
        loop.add_signal_handler(signal.SIGUSR1, got.append, "child handler")
        os.kill(os.getpid(), signal.SIGUSR1)
        while len(got) < 1:
            await asyncio.sleep(0.005)
        os.write(ready_w, b"r")  # now the parent sends one
        while len(got) < 2:
            await asyncio.sleep(0.005)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        return got

    try:
        say("child", *clp.run_until_complete(asyncio.wait_for(cmain(), 10)))
    finally:
        clp.close()

pid = fork_child(child)
os.close(ready_w)
ready, _, _ = select.select([ready_r], [], [], 10)
assert ready and os.read(ready_r, 1) == b"r", "the child never got its first signal"
os.kill(pid, signal.SIGUSR1)
say("child exit", exit_code(pid))
os.close(ready_r)

lp.run_until_complete(asyncio.sleep(0.05))
say("parent before", len(parent_got))

async def wait_parent():
    while not parent_got:
        await asyncio.sleep(0.005)
    return parent_got

os.kill(os.getpid(), signal.SIGUSR1)
say("parent after", *lp.run_until_complete(asyncio.wait_for(wait_parent(), 5)))
assert lp.remove_signal_handler(signal.SIGUSR1)
lp.close()
""",
    # The parent's loop waited on a socket with sock_recv (fastloop keeps it
    # registered with the kernel between waits). The child uses that same loop for a
    # sock_recv of its own, then closes it; the parent's waits go on working.
    "sock_waits": """
lp = new_loop()
a, b = socket.socketpair()
a.setblocking(False)

async def recv_later(loop, sock, peer, data):
    loop.call_later(0.01, peer.send, data)
    return (await asyncio.wait_for(loop.sock_recv(sock, 100), 5)).decode()

say("parent", lp.run_until_complete(recv_later(lp, a, b, b"before")))

def child():
    c, d = socket.socketpair()
    c.setblocking(False)
    try:
        say("child", lp.run_until_complete(recv_later(lp, c, d, b"in child")))
    finally:
        lp.close()

say("child exit", exit_code(fork_child(child)))
say("parent", lp.run_until_complete(recv_later(lp, a, b, b"after")))
lp.close()
""",
}


def test_fork_sock_waits_of_parent_and_child(loop_name):
    assert run_script("sock_waits", loop_name) == [
        "parent before",
        "child in child",
        "child exit 7",
        "parent after",
    ]


def run_script(name, loop_name):
    script = PRELUDE + textwrap.dedent(SCRIPTS[name])
    out = subprocess.run(
        [sys.executable, "-c", script, loop_name],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, f"rc={out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.stderr == "", out.stderr
    return out.stdout.splitlines()


def test_fork_after_a_closed_loop(loop_name):
    assert run_script("after_closed_loop", loop_name) == [
        f"parent {loop_name} True from-grandchild 3",
        f"child {loop_name} True from-grandchild 3",
        "child exit 7",
    ]


def test_fork_with_an_open_loop(loop_name):
    assert run_script("with_open_loop", loop_name) == [
        f"parent {loop_name} True from-grandchild 3",
        f"child {loop_name} True from-grandchild 3",
        "child exit 7",
        "parent after still watched timer fired",
    ]


def test_fork_inside_a_running_loop_callback(loop_name):
    assert run_script("inside_callback", loop_name) == [
        f"child {loop_name} True from-grandchild 3",
        "child exit 7",
        f"parent after {loop_name} ping True",
    ]


def test_fork_signal_handlers_of_parent_and_child_loops(loop_name):
    assert run_script("signal_handlers", loop_name) == [
        "child child handler child handler",
        "child exit 7",
        "parent before 0",
        "parent after parent handler",
    ]
