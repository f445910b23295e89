"""The child of the random driver: runs operations on one loop, records outcomes.

``python -m tests.fuzz_driver --loop {asyncio,fastloop} --seed S --count N``
draws the N operations of seed S (``fuzz_ops``) and runs them on the named
loop; ``--only I`` runs operation I alone and prints what happened, with the
tracebacks (this is the one-line repro the report gives). The parent
(``fuzz_compare``) runs the child with ``--ops FILE``, the operations
generated once and pickled, and ``--start`` to go on after a crash.

Each operation starts from scratch (a new loop, new fixtures, its own
temporary directory as cwd) and ends with everything closed and collected,
so that one operation can be replayed alone. Before operation I the child
writes and flushes ``{"start": I}``; after it, one JSON line: ``out`` is
``ok`` or ``raise:<class>[<errno>]`` for the call (an awaitable result is
awaited, so a coroutine method and a plain method that raises at once
compare equal) or ``timeout``; the other fields are what can be compared
deterministically: the returned value of query methods (``value``), the
callbacks and protocol events (``fx``) and exception handler calls
(``handler``) up to the end of the iterations after the call, the bytes the
peer got (``peer_got``) and the protocol received (``received``), and what
the operation left behind (``left``: fds, signal handlers, the wake-up fd, a
running loop). A watchdog ends the child when one operation runs longer
than ``OP_WATCHDOG`` seconds: a hang.

Nothing the driver does reaches outside the child: sockets bind to loopback
or to paths in the operation's temporary directory, the only programs
spawned are ``/bin/true`` and ``sh -c`` with a fixed harmless command,
signals are never sent (handlers are only installed), and the fds it
closes are its own.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import math
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
import weakref

from .fuzz_env import DProto, Env, Proto, new_loop, outcome_of, proto_class
from .fuzz_ops import AWAIT_TIMEOUT, Op, Tok, generate

# One operation running longer than this is a hang.
OP_WATCHDOG = 20.0

# ---- the child: targets in their states -----------------------------------------------


def _settle_transport(env, transport, peer, protocol=None, rounds=6):
    """Run the loop until nothing moves: writes drained into the peer, reads done.

    Returns the bytes the peer got. "Nothing moves" is counted in iterations
    with no change, not in time: how many bytes one iteration moves is the
    loop's business, where they end up is what is compared.
    """
    got = 0
    deadline = time.monotonic() + AWAIT_TIMEOUT
    quiet = 0
    while time.monotonic() < deadline and env.usable():
        before = _progress(env, protocol)
        env.iterate()
        n = _drain(peer)
        got += n
        pending = 0
        if transport is not None and env.usable():
            try:
                pending = transport.get_write_buffer_size()
            except Exception:
                pending = 0
        quiet = quiet + 1 if (n == 0 and not pending and before == _progress(env, protocol)) else 0
        if quiet >= rounds:
            break
    got += _drain(peer, wait=0.002)
    return got


def _progress(env, protocol):
    # Distinct handler reports, not their number: asyncio's write pipe can
    # report the same error on every iteration for ever.
    return getattr(protocol, "received", 0), len(env.fx), len(set(env.handler_calls))


def _drain(peer, wait=0.0):
    if peer is None:
        return 0
    total = 0
    while True:
        try:
            ready, _, _ = select.select([peer], [], [], wait)
        except (OSError, ValueError):
            return total
        if not ready:
            return total
        try:
            if isinstance(peer, socket.socket):
                data = peer.recv(1 << 20)
            else:
                data = os.read(peer.fileno(), 1 << 20)
        except (BlockingIOError, InterruptedError):
            return total
        except OSError:
            return total
        if not data:
            return total
        total += len(data)


class Target:
    """The object an operation calls, its peer, and the protocol to inspect."""

    def __init__(self, obj, peer=None, protocol=None):
        self.obj = obj
        self.peer = peer
        self.protocol = protocol


def make_target(env: Env, op: Op) -> Target:
    kind = op.kind.split("/")
    loop = env.loop
    if kind[0] == "loop":
        if op.state == "closed":
            loop.close()
        elif op.state == "stopped":
            loop.stop()
        return Target(loop)
    if kind[0] in ("tcp", "unix"):
        if kind[0] == "unix":
            a, b = socket.socketpair()
        else:
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(1)
            a = socket.create_connection(ls.getsockname())
            b, _ = ls.accept()
            ls.close()
        env.own(a)
        env.own(b)
        a.setblocking(False)
        b.setblocking(False)
        proto = proto_class(kind[1])(env)
        tr, _ = loop.run_until_complete(loop.create_connection(lambda: proto, sock=a))
        env.made.append(tr)
        env.iterate(2)
        target = Target(tr, b, proto)
    elif kind[0] == "rpipe":
        r, w = os.pipe()
        rf = env.own(os.fdopen(r, "rb", buffering=0))
        wf = env.own(os.fdopen(w, "wb", buffering=0))
        proto = proto_class(kind[1])(env)
        tr, _ = loop.run_until_complete(loop.connect_read_pipe(lambda: proto, rf))
        env.made.append(tr)
        env.iterate(2)
        target = Target(tr, wf, proto)
    elif kind[0] == "wpipe":
        r, w = os.pipe()
        rf = env.own(os.fdopen(r, "rb", buffering=0))
        wf = env.own(os.fdopen(w, "wb", buffering=0))
        os.set_blocking(r, False)
        proto = proto_class(kind[1])(env)
        tr, _ = loop.run_until_complete(loop.connect_write_pipe(lambda: proto, wf))
        env.made.append(tr)
        env.iterate(2)
        target = Target(tr, rf, proto)
    elif kind[0] == "udp":
        proto = DProto(env)
        peer = env.udp_peer()
        tr, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
        )
        env.made.append(tr)
        env.iterate(2)
        target = Target(tr, peer, proto)
    elif kind[0] in ("server", "userver"):
        serving = op.state != "not_serving"
        if kind[0] == "server":
            coro = loop.create_server(
                lambda: Proto(env, "s"), "127.0.0.1", 0, start_serving=serving
            )
        else:
            coro = loop.create_unix_server(
                lambda: Proto(env, "s"), env.path("server.sock"), start_serving=serving
            )
        server = loop.run_until_complete(coro)
        env.made.append(server)
        env.cache["server_addr"] = server.sockets[0].getsockname()
        env.cache["server_family"] = server.sockets[0].family
        target = Target(server)
        if op.state == "closed":
            server.close()
            env.iterate(2)
        elif op.state == "loop_closed":
            loop.close()
        env.fx.clear()
        return target
    elif kind[0] in ("handle", "timer"):
        cb = env.val(Tok("cb_ok"))
        h = loop.call_soon(cb, "h") if kind[0] == "handle" else loop.call_later(3600, cb, "t")
        env.cache[Tok("self")] = h
        env.cache[Tok("other_timer")] = loop.call_later(7200, cb, "t2")
        if op.state == "cancelled":
            h.cancel()
        elif op.state == "ran":
            if kind[0] == "timer":
                h.cancel()
                h = loop.call_later(0, cb, "t")
                env.cache[Tok("self")] = h
                deadline = time.monotonic() + AWAIT_TIMEOUT
                while not env.fx and time.monotonic() < deadline:
                    env.iterate()
            env.iterate()
        elif op.state == "loop_closed":
            loop.close()
        env.fx.clear()
        return Target(h)
    else:
        raise AssertionError(op.kind)

    # transports: put it in its state
    tr = target.obj
    state = op.state
    if state == "paused":
        tr.pause_reading()
    elif state == "closing":
        tr.close()
    elif state in ("closed", "aborted"):
        tr.close() if state == "closed" else tr.abort()
        _settle_transport(env, tr, target.peer, target.protocol)
    elif state == "peer_closed":
        target.peer.close()
        _settle_transport(env, tr, None, target.protocol)
    elif state == "eof_written":
        tr.write_eof()
        _settle_transport(env, tr, target.peer, target.protocol)
    elif state == "loop_closed":
        loop.close()
    return target


# ---- the child: pseudo-methods ------------------------------------------------------------


def p_stale_fd(env, loop, variant):
    """Watch a pipe, close it, then reuse its number: libuv and epoll both remember fds."""
    cb = env.val(Tok("cb_ok"))
    r, w = os.pipe()
    if variant == "writer":
        loop.add_writer(w, cb, "w")
        os.close(r)
        os.close(w)
        return loop.remove_writer(w)
    loop.add_reader(r, cb, "r")
    os.close(r)
    os.close(w)
    r2, w2 = os.pipe()  # most likely the same numbers
    env.own(os.fdopen(r2, "rb", buffering=0))
    env.own(os.fdopen(w2, "wb", buffering=0))
    if variant == "remove":
        return loop.remove_reader(r)
    if variant == "readd":
        loop.add_reader(r2, cb, "r2")
        return loop.remove_reader(r2)
    loop.add_writer(r, cb, "w")
    return loop.remove_writer(r)


def p_sleep(env, loop, delay):
    return asyncio.sleep(delay)


def p_timer_fires(env, loop, when):
    fired = loop.create_future() if not loop.is_closed() else None

    def cb():
        if fired is not None and not fired.done():
            fired.set_result("fired")

    loop.call_at(when, cb)

    async def wait():
        try:
            return await asyncio.wait_for(asyncio.shield(fired), 0.3)
        except TimeoutError:
            return "not fired"

    return wait()


def p_peer_send(env, target, n, then_close):
    peer = env.cache["target"].peer
    if peer is None:
        return None
    if isinstance(peer, socket.socket):
        if peer.type == socket.SOCK_DGRAM:
            peer.sendto(b"u" * min(n, 2000), env.cache["target"].obj.get_extra_info("sockname"))
        else:
            try:
                peer.send(b"u" * n)
            except BlockingIOError:
                pass
        if then_close:
            peer.close()
    else:
        try:
            os.write(peer.fileno(), b"u" * min(n, 60000))
        except (BlockingIOError, BrokenPipeError):
            pass
        if then_close:
            peer.close()
    return None


def p_connect(env, server):
    family = env.cache["server_family"]
    c = env.own(socket.socket(family))
    c.settimeout(2.0)
    c.connect(env.cache["server_addr"])
    return None


def p_sockets(env, server):
    return server.sockets


PSEUDO = {
    "@stale_fd": p_stale_fd,
    "@sleep": p_sleep,
    "@timer_fires": p_timer_fires,
    "@peer_send": p_peer_send,
    "@connect": p_connect,
    "@sockets": p_sockets,
    "@weakref": lambda env, h: weakref.ref(h),
    "@hash": lambda env, h: hash(h),
    "@repr": lambda env, h: repr(h),
    "@eq": lambda env, h, other: h == other,
    "@lt": lambda env, h, other: h < other,
    "@le": lambda env, h, other: h <= other,
}


# ---- the child: running one operation ----------------------------------------------------

_SIGNALS_WATCHED = (
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGHUP,
    signal.SIGWINCH,
    signal.SIGPIPE,
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _value_repr(method, value):
    if method == "getaddrinfo" and isinstance(value, list):
        # A fixture's port is a different number on each run.
        return repr(
            sorted(
                (int(f), int(t), p, c, (a[0], "port" if a[1] >= 1024 else a[1], *a[2:]))
                for f, t, p, c, a in value
            )
        )
    if method == "get_extra_info":
        return type(value).__name__
    if isinstance(value, (bool, int, str, bytes, tuple, type(None))):
        return repr(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return type(value).__name__


def _awaitable(value):
    return asyncio.iscoroutine(value) or asyncio.isfuture(value)


def run_op(loop_name: str, op: Op, tmp: str, trace=None) -> dict:
    """Run one operation in a fresh environment; the record to compare."""
    fds_before = _open_fds()
    handlers_before = {s: signal.getsignal(s) for s in _SIGNALS_WATCHED}
    # Each operation's files (Unix socket paths...) in a directory of its own,
    # its cwd, removed after it: nothing one operation leaves meets the next.
    optmp = tempfile.mkdtemp(dir=tmp)
    os.chdir(optmp)
    env = Env(loop_name, optmp)
    env.trace = trace
    rec: dict = {}
    spec = op.spec()
    try:
        try:
            target = make_target(env, op)
        except Exception as exc:
            rec["setup"] = outcome_of(exc)
            if trace is not None:
                trace.append(traceback.format_exc())
            target = None
        rec["setup_fx"] = list(env.fx)
        env.fx.clear()
        env.handler_calls.clear()
        if target is not None:
            env.cache["target"] = target
            _call_op(env, op, spec, target, rec, trace)
    finally:
        rec["teardown"] = _teardown(env)
        os.chdir(tmp)
        shutil.rmtree(optmp, ignore_errors=True)
    gc.collect()
    # What survived is the driver's and hypothesis's: out of later collections.
    gc.freeze()
    left = []
    if asyncio._get_running_loop() is not None:
        asyncio.events._set_running_loop(None)
        left.append("running loop set")
    wakeup = signal.set_wakeup_fd(-1)
    if wakeup != -1:
        left.append("wakeup fd set")
    for sig, handler in handlers_before.items():
        if signal.getsignal(sig) != handler:
            left.append(f"{signal.Signals(sig).name} handler")
            signal.signal(sig, handler)
    if sys.get_asyncgen_hooks() != (None, None):
        sys.set_asyncgen_hooks(None, None)
        left.append("asyncgen hooks")
    fds = _open_fds() - fds_before
    if fds:
        left.append(f"{fds:+d} fds")
    rec["left"] = left
    return rec


def _call_op(env, op, spec, target, rec, trace):
    obj = target.obj
    args = [env.val(a) for a in op.args]
    kwargs = {k: env.val(v) for k, v in op.kwargs}

    def call():
        try:
            if op.method in PSEUDO:
                return "ok", PSEUDO[op.method](env, obj, *args, **kwargs)
            return "ok", getattr(obj, op.method)(*args, **kwargs)
        except BaseException as exc:  # OopsBase, SystemExit from odd objects...
            if trace is not None:
                trace.append(traceback.format_exc())
            return outcome_of(exc), None

    def finish(outcome, value):
        rec["out"] = "not compared" if spec.crash_only else outcome
        if outcome == "ok" and spec.value:
            rec["value"] = _value_repr(op.method, value)

    if op.in_task and env.usable():

        async def body():
            outcome, value = call()
            if outcome == "ok" and spec.awaits and _awaitable(value):
                try:
                    value = await asyncio.wait_for(value, spec.timeout)
                except TimeoutError:
                    outcome = "timeout"
                except BaseException as exc:
                    if trace is not None:
                        trace.append(traceback.format_exc())
                    outcome = outcome_of(exc)
            finish(outcome, value)
            _adopt(env, value)
            await asyncio.sleep(0)

        outcome, _ = env.run(body(), OP_WATCHDOG / 2)
        if "out" not in rec:
            rec["out"] = f"task {outcome}"
    else:
        outcome, value = call()
        if outcome == "ok" and spec.awaits and _awaitable(value):
            if op.state == "stopped":
                env.iterate()  # the pending stop() ends the next run
            if env.usable():
                outcome, value = env.run(value, spec.timeout)
            elif asyncio.iscoroutine(value):
                # A coroutine of a closed loop: run it where it can run, to see
                # what the loop's own code does with it.
                helper = env.helper_loop()
                try:
                    value = helper.run_until_complete(asyncio.wait_for(value, spec.timeout))
                except TimeoutError:
                    outcome = "timeout"
                except BaseException as exc:
                    if trace is not None:
                        trace.append(traceback.format_exc())
                    outcome = outcome_of(exc)
            else:
                outcome = "pending-future" if not value.done() else outcome
        finish(outcome, value)
        _adopt(env, value)
    if op.kind == "loop" and op.state == "stopped":
        env.iterate()
    if spec.fx or op.kind != "loop":
        if op.kind == "loop":
            env.iterate()
            received = None
        else:
            received = _settle_transport(env, target.obj, target.peer, target.protocol)
            if target.protocol is not None:
                rec["received"] = target.protocol.received
        # What the operation dropped is collected now: when garbage is found
        # (at once by reference counting, or by a later collection of a cycle
        # through a traceback) differs between the loops, its reports do not.
        gc.collect()
        rec["fx"] = list(env.fx)
        rec["handler"] = sorted(set(env.handler_calls))
        if received:
            rec["peer_got"] = received


def _adopt(env, value):
    """Transports, servers and processes the operation made are closed at the end."""
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if isinstance(item, (asyncio.BaseTransport, asyncio.AbstractServer)):
            env.made.append(item)


def _teardown(env) -> list:
    """Close what the operation made; the errors (not compared, shown by --only)."""
    errors = []
    loop = env.loop

    def step(name, fn):
        try:
            fn()
        except BaseException as exc:
            errors.append(f"{name}: {outcome_of(exc)}")

    for item in env.made:
        if isinstance(item, asyncio.SubprocessTransport):
            step("kill", lambda item=item: item.kill() if item.get_returncode() is None else None)
        step(f"close {type(item).__name__}", item.close)
    if env.usable():
        for task in asyncio.all_tasks(loop):
            task.cancel()
        env.iterate(3)
        # A child killed above: wait for its exit (the transport's close needs it).
        deadline = time.monotonic() + 5
        while env.usable() and time.monotonic() < deadline:
            if not any(
                isinstance(t, asyncio.SubprocessTransport) and t.get_returncode() is None
                for t in env.made
            ):
                break
            time.sleep(0.002)
            env.iterate()
        if env.usable():
            step("shutdown_default_executor", lambda: env.run(loop.shutdown_default_executor(), 5))
    if not loop.is_running():
        step("loop.close", loop.close)
    for ex in env.executors:
        ex.shutdown(wait=True)
    for obj in env.owned:
        if asyncio.iscoroutine(obj):
            obj.close()
        elif isinstance(obj, asyncio.AbstractEventLoop):
            if not obj.is_closed():
                obj.close()
        else:
            step("close", obj.close)
    env.cache.clear()
    env.made.clear()
    env.owned.clear()
    return errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "fastloop"), required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, required=True, help="the operations drawn")
    parser.add_argument("--start", type=int, default=0, help="skip the operations before this")
    parser.add_argument("--only", type=int, default=None, help="run this operation alone, verbose")
    parser.add_argument("--ops", default=None, help="the operations, pickled (else: drawn)")
    parser.add_argument("--out", default=None, help="the JSON lines file (default: stdout)")
    parser.add_argument("--tmp", default=None, help="a directory for the operations' files")
    ns = parser.parse_args(argv)
    if ns.tmp is None:
        with tempfile.TemporaryDirectory(prefix="fastloop-fuzz-") as tmp:
            ns.tmp = tmp
            return _child(ns)
    return _child(ns)


def _child(ns) -> int:
    warnings.simplefilter("ignore")
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    faulthandler.enable()
    out = open(ns.out, "a", buffering=1) if ns.out else sys.stdout  # noqa: SIM115
    tmp = os.path.abspath(ns.tmp)
    os.chdir(tmp)
    # What a loop of this kind makes once per process (fastloop's import, the
    # first loop's lazily made objects) is made now, not counted against the
    # first operation.
    warm = new_loop(ns.loop)
    warm.run_until_complete(asyncio.sleep(0))
    warm.close()
    gc.collect()
    gc.freeze()

    def visit(i, op):
        if i < ns.start or (ns.only is not None and i != ns.only):
            return
        desc = op.describe()
        if ns.only is not None:
            sys.stderr.write(f"op {i}: {desc}\n")
        out.write(json.dumps({"start": i}) + "\n")
        out.flush()
        faulthandler.dump_traceback_later(OP_WATCHDOG, exit=True)
        trace = [] if ns.only is not None else None
        t0 = time.perf_counter()
        try:
            rec = run_op(ns.loop, op, tmp, trace)
        except BaseException as exc:  # a bug of the driver: say so, go on
            rec = {"out": f"driver-error {outcome_of(exc)}"}
            sys.stderr.write(f"op {i}: driver error\n{traceback.format_exc()}")
        faulthandler.cancel_dump_traceback_later()
        rec = {"op": i, "desc": desc, "kinds": op.kinds(), **rec}
        rec["ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out.write(json.dumps(rec) + "\n")
        out.flush()
        if trace:
            sys.stderr.write("".join(trace))

    if ns.ops is not None:
        with open(ns.ops, "rb") as f:
            ops = pickle.load(f)
        for i in range(ns.start, len(ops)):
            visit(i, ops[i])
    else:
        generate(ns.seed, ns.count, visit)
    out.write(json.dumps({"done": True}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
