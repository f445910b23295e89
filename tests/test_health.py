"""Loop health: metrics(), utilization(), monitor_lag(), set_slow_callback_handler(),
start_watchdog() and the Prometheus and OpenTelemetry exporters.

asyncio's loop has none of these APIs (only debug mode's slow-callback log, which
tests/test_debug.py covers on both loops), so every test here runs on fastloop
alone; test_asyncio_has_no_health_api pins that difference down on both loops.
Durations are asserted with margins that hold on a loaded 2-core machine; each
bound the issue sets (a stall reported within stall + resolution) is checked with
the margin stated next to it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import fastloop
import pytest

pytestmark = pytest.mark.timeout(60)

HEALTH_METHODS = (
    "metrics",
    "utilization",
    "monitor_lag",
    "set_slow_callback_handler",
    "start_watchdog",
    "stop_watchdog",
)


@pytest.fixture
def floop():
    """A fastloop loop (these APIs are fastloop's), closed and checked afterwards."""
    calls = []
    lp = fastloop.new_event_loop()
    lp.set_exception_handler(lambda _loop, ctx: calls.append(ctx))
    lp.exc_calls = calls
    yield lp
    if not lp.is_closed():
        lp.close()
    assert not calls, f"unexpected exception handler calls: {calls}"


def monitor_threads():
    """The native monitor threads of this process (named by the core)."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that just ended
            pass
    return names.count("fastloop-mon")


def run_script(code: str, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- the API is fastloop's ------------------------------------------------------


def test_asyncio_has_no_health_api(loop, loop_name):
    """The one difference this file is about: only fastloop has these methods."""
    present = [name for name in HEALTH_METHODS if hasattr(loop, name)]
    if loop_name == "asyncio":
        assert present == []
    else:
        assert present == list(HEALTH_METHODS)


# ---- metrics() and utilization() ---------------------------------------------------


def test_metrics_count_callbacks_timers_and_queue(floop):
    """asyncio's loop has no metrics(): fastloop only."""
    assert floop.metrics() == fastloop.LoopMetrics(0, 0, 0, 0, 0, 0, 0, 0.0, 0.0)
    for _ in range(10):
        floop.call_soon(lambda: None)
    floop.call_later(100, lambda: None)
    floop.call_later(100, lambda: None).cancel()
    m = floop.metrics()
    assert (m.ready, m.timers, m.callbacks) == (10, 1, 0)
    seen = []
    floop.call_soon(lambda: seen.append(floop.metrics()))
    floop.call_soon(floop.stop)
    floop.run_forever()
    # The 11th callback saw 10 done and itself and stop() still queued.
    assert seen[0].callbacks == 10
    assert seen[0].ready == 1
    m = floop.metrics()
    assert m.callbacks == 12 and m.ready == 0 and m.iterations >= 1
    assert m.active_time > 0


def test_metrics_count_fds_transports_and_io_events(floop):
    """asyncio's loop has no metrics(): fastloop only."""
    import socket

    a, b = socket.socketpair()
    try:
        floop.add_reader(a.fileno(), lambda: None)
        assert floop.metrics().fds == 1
        floop.remove_reader(a.fileno())
        assert floop.metrics().fds == 0
    finally:
        a.close()
        b.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        during = floop.metrics()
        for _ in range(5):
            writer.write(b"ping")
            await reader.readexactly(4)
        after = floop.metrics()
        writer.close()
        await writer.wait_closed()
        await handler_done.wait()
        server.close()
        await server.wait_closed()
        return during, after

    handler_done = asyncio.Event()

    async def echo(reader, writer):
        while data := await reader.read(100):
            writer.write(data)
        writer.close()
        await writer.wait_closed()
        handler_done.set()

    during, after = floop.run_until_complete(main())
    # The listener, the client's transport and (once accepted) the server's.
    assert during.transports >= 2
    assert after.io_events >= during.io_events + 10  # a read on each side per ping


def test_utilization_idle_and_busy(floop):
    """asyncio's loop has no utilization(): fastloop only (Node.js's ELU)."""

    async def main():
        before = floop.utilization()
        await asyncio.sleep(1)
        idle = floop.utilization(before)
        before = floop.utilization()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            await asyncio.sleep(0)
        busy = floop.utilization(before)
        return idle, busy

    idle, busy = floop.run_until_complete(main())
    assert idle.utilization < 0.05, idle
    assert idle.idle > 0.9, idle
    assert busy.utilization > 0.9, busy
    total = floop.utilization()
    assert total.idle + total.active == pytest.approx(
        floop.metrics().idle_time + floop.metrics().active_time, rel=0.01
    )


def test_utilization_rejects_what_is_not_a_result(floop):
    """asyncio's loop has no utilization(): fastloop only."""
    with pytest.raises(TypeError, match="Utilization"):
        floop.utilization((1.0, 2.0, 0.5))


# ---- monitor_lag() ------------------------------------------------------------------


def test_lag_histogram_sees_a_callback_that_blocks(floop):
    """asyncio's loop has no monitor_lag(): fastloop only."""
    lag = floop.monitor_lag(0.01)
    assert lag.running and lag.resolution == 0.01

    async def main():
        await asyncio.sleep(0.1)
        floop.call_soon(time.sleep, 0.2)
        await asyncio.sleep(0.1)

    floop.run_until_complete(main())
    assert 0.15 < lag.max < 1.0, lag
    assert lag.percentile(100) == lag.max
    assert lag.count >= 10
    assert lag.min <= lag.percentile(50) <= lag.mean <= lag.max
    assert lag.percentile(50) < 0.05  # the idle samples
    assert lag.stddev > 0
    assert set(lag.percentiles) == {50, 75, 90, 99, 99.9}
    assert floop.monitor_lag() is lag  # one per loop: the running one
    lag.reset()
    assert (lag.count, lag.max, lag.min, lag.mean) == (0, 0.0, 0.0, 0.0)
    lag.stop()
    assert not lag.running
    floop.run_until_complete(asyncio.sleep(0.05))
    assert lag.count == 0
    again = floop.monitor_lag(0.005)
    assert again is not lag and again.running
    floop.run_until_complete(asyncio.sleep(0.05))
    assert again.count >= 3


def test_lag_samples_while_busy_without_polling(floop):
    """A loop that never polls (a ready callback each iteration) still samples:
    the monitor thread flags a due sample and the loop takes it. fastloop only."""
    lag = floop.monitor_lag(0.01)

    async def spin():
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            await asyncio.sleep(0)

    floop.run_until_complete(spin())
    assert lag.count >= 10, lag
    assert lag.max < 0.1, lag


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_lag_resolution_must_be_positive(floop, bad):
    """asyncio's loop has no monitor_lag(): fastloop only."""
    with pytest.raises(ValueError, match="resolution"):
        floop.monitor_lag(bad)
    with pytest.raises(TypeError, match="resolution"):
        floop.monitor_lag("0.01")


def test_lag_percentile_range(floop):
    """asyncio's loop has no monitor_lag(): fastloop only."""
    lag = floop.monitor_lag()
    for p in (0, -5, 101):
        with pytest.raises(ValueError, match="percentile"):
            lag.percentile(p)
    assert lag.percentile(99) == 0.0  # no samples yet


# ---- set_slow_callback_handler() ----------------------------------------------------


async def blocking_coroutine():
    await asyncio.sleep(0)
    time.sleep(0.2)
    await asyncio.sleep(0.01)


def test_slow_task_step_is_reported_with_coroutine_name_and_location(floop):
    """asyncio's loop reports slow callbacks only in debug mode, to its log;
    fastloop calls a handler, debug mode off. fastloop only."""
    reports = []
    floop.set_slow_callback_handler(0.1, reports.append)
    assert not floop.get_debug()
    task = floop.create_task(blocking_coroutine())
    floop.run_until_complete(task)
    assert len(reports) == 1, reports
    r = reports[0]
    assert r.task is task
    assert r.name == "blocking_coroutine"
    path, _, line = r.location.rpartition(":")
    assert path == __file__
    lines, first = inspect.getsourcelines(blocking_coroutine)
    assert first <= int(line) < first + len(lines)
    assert 0.15 <= r.duration < 1.0, r.duration
    assert r.await_chain[0] == f"blocking_coroutine ({r.location})"
    assert r.handle is not None


def test_slow_plain_callback_and_await_chain(floop):
    """asyncio's loop has no slow-callback handler: fastloop only."""
    reports = []
    floop.set_slow_callback_handler(0.05, reports.append)

    def block():
        time.sleep(0.1)

    async def inner():
        await asyncio.sleep(0)
        block()
        await asyncio.sleep(0.01)

    async def outer():
        await inner()

    floop.call_soon(block)
    for _ in range(200):
        floop.call_soon(lambda: None)  # fast ones are not reported
    floop.run_until_complete(outer())
    assert [r.name for r in reports] == [
        block.__qualname__,
        "test_slow_plain_callback_and_await_chain.<locals>.outer",
    ]
    plain, step = reports
    assert plain.task is None and plain.await_chain == () and plain.callback is block
    assert plain.location == f"{__file__}:{block.__code__.co_firstlineno}"
    names = [entry.split(" (")[0] for entry in step.await_chain]
    assert names[:2] == [outer.__qualname__, inner.__qualname__]


def test_slow_callback_handler_removed_and_errors_reported(floop):
    """asyncio's loop has no slow-callback handler: fastloop only."""
    reports = []
    floop.set_slow_callback_handler(0.05, reports.append)
    floop.set_slow_callback_handler(0.05, None)
    floop.call_soon(time.sleep, 0.1)
    floop.run_until_complete(asyncio.sleep(0.01))
    assert reports == []

    def failing(report):
        raise ZeroDivisionError("handler")

    floop.set_slow_callback_handler(0.05, failing)
    floop.call_soon(time.sleep, 0.1)
    floop.run_until_complete(asyncio.sleep(0.01))
    assert len(floop.exc_calls) == 1
    ctx = floop.exc_calls.pop()
    assert ctx["message"] == "Exception in the slow callback handler"
    assert isinstance(ctx["exception"], ZeroDivisionError)


def test_slow_callback_that_raises_keeps_its_exception(floop):
    """A slow callback that fails is reported, and its error too. fastloop only."""
    reports = []
    floop.set_slow_callback_handler(0.05, reports.append)

    def block_and_fail():
        time.sleep(0.1)
        raise ValueError("boom")

    floop.call_soon(block_and_fail)
    floop.run_until_complete(asyncio.sleep(0.01))
    assert [r.callback for r in reports] == [block_and_fail]
    assert [type(c["exception"]) for c in floop.exc_calls] == [ValueError]
    floop.exc_calls.clear()


def test_slow_callback_handler_arguments(floop):
    """asyncio's loop has no slow-callback handler: fastloop only."""
    for bad in (0, -0.1, math.nan):
        with pytest.raises(ValueError, match="threshold"):
            floop.set_slow_callback_handler(bad, print)
    with pytest.raises(TypeError, match="threshold"):
        floop.set_slow_callback_handler("1", print)
    with pytest.raises(TypeError, match="callable"):
        floop.set_slow_callback_handler(0.1, 42)


# ---- start_watchdog() -----------------------------------------------------------------


def test_watchdog_handler_gets_the_stack_of_a_blocked_loop(floop):
    """asyncio's loop has no watchdog: fastloop only."""
    stall, resolution = 0.3, 0.05
    reports = []
    seen = {}

    def on_stall(report):
        reports.append((time.monotonic(), report))

    def block_the_loop():
        seen["start"] = time.monotonic()
        time.sleep(1)
        seen["during"] = list(reports)

    async def main():
        await asyncio.sleep(0.05)
        floop.call_soon(block_the_loop)
        await asyncio.sleep(0)  # runs after the callback
        await asyncio.sleep(0.2)  # the watchdog sees the loop poll again

    floop.start_watchdog(stall, resolution=resolution, handler=on_stall)
    floop.run_until_complete(main())
    floop.stop_watchdog()
    # Reported while the loop was still blocked, with its stack.
    assert len(seen["during"]) == 1
    at, report = seen["during"][0]
    assert not report.ended
    # Within stall + resolution of the stall's start (+0.15 s for a loaded machine
    # to schedule the watchdog thread and hand it the GIL).
    assert at - seen["start"] <= stall + resolution + 0.15
    assert stall <= report.duration <= stall + resolution + 0.15
    assert report.thread_id == __import__("threading").get_ident()
    assert [f.name for f in report.stack][-1] == "block_the_loop"
    # And when it ended, with its duration.
    ends = [r for _, r in reports if r.ended]
    assert len(ends) == 1
    assert 0.9 <= ends[0].duration < 2.0
    assert list(ends[0].stack) == []


def test_watchdog_quiet_while_idle_or_busy(floop):
    """Neither a loop waiting in a poll nor one running short callbacks stalls."""
    reports = []
    floop.start_watchdog(0.1, resolution=0.02, handler=reports.append)

    async def main():
        await asyncio.sleep(0.3)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            await asyncio.sleep(0)

    floop.run_until_complete(main())
    assert reports == []


def test_watchdog_writes_stack_to_file_without_the_gil(tmp_path):
    """The file watchdog dumps the loop thread's stack even while that thread holds
    the GIL (a PyDLL call keeps it): faulthandler runs in the loop's thread.
    A child process, as faulthandler's signal handler is process-wide."""
    out = tmp_path / "stall.txt"
    r = run_script(
        f"""
        import asyncio, ctypes, fastloop
        libc = ctypes.PyDLL(None)  # calls keep the GIL

        def hold_the_gil_for_a_second():
            libc.usleep(1000000)

        async def main():
            loop = asyncio.get_running_loop()
            with open({str(out)!r}, "w") as f:
                loop.start_watchdog(0.3, resolution=0.05, file=f)
                await asyncio.sleep(0.05)
                loop.call_soon(hold_the_gil_for_a_second)
                await asyncio.sleep(0)  # runs after the callback
                await asyncio.sleep(0.2)  # the watchdog sees the loop poll again
                loop.stop_watchdog()

        fastloop.run(main())
        """
    )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "fastloop: the event loop has not polled for 0.3" in text, text
    assert "in hold_the_gil_for_a_second" in text, text
    assert "fastloop: the event loop polled again after a stall of " in text, text


@pytest.mark.parametrize("bad", [0, -1, math.nan])
def test_watchdog_arguments(floop, bad):
    """asyncio's loop has no watchdog: fastloop only."""
    with pytest.raises(ValueError, match="stall"):
        floop.start_watchdog(bad)
    with pytest.raises(ValueError, match="resolution"):
        floop.start_watchdog(1, resolution=bad)
    with pytest.raises(ValueError, match="not both"):
        floop.start_watchdog(1, file=sys.stderr, handler=print)
    with pytest.raises(TypeError, match="callable"):
        floop.start_watchdog(1, handler=3)
    with pytest.raises(TypeError, match="file must be a file"):
        floop.start_watchdog(1, file=object())


# ---- the monitor thread's life ----------------------------------------------------------


def test_monitor_thread_ends_with_the_monitors_and_the_loop(floop):
    """The monitor is a native thread: it exists only while something is watched."""
    base = monitor_threads()
    lag = floop.monitor_lag()
    assert monitor_threads() == base + 1
    floop.set_slow_callback_handler(0.1, print)
    floop.start_watchdog(1, handler=print)
    assert monitor_threads() == base + 1  # one thread for all three
    lag.stop()
    floop.set_slow_callback_handler(0.1, None)
    floop.stop_watchdog()
    assert monitor_threads() == base
    floop.monitor_lag()
    floop.start_watchdog(1)
    floop.close()
    assert monitor_threads() == base


def test_closed_loop_raises_as_asyncio_does(floop):
    """After close(), each method raises RuntimeError('Event loop is closed'), as
    asyncio's methods do; a lag monitor's histogram stays readable."""
    lag = floop.monitor_lag(0.005)
    floop.run_until_complete(asyncio.sleep(0.05))
    count = lag.count
    floop.close()
    calls = [
        lambda: floop.metrics(),
        lambda: floop.utilization(),
        lambda: floop.monitor_lag(),
        lambda: floop.set_slow_callback_handler(0.1, print),
        lambda: floop.start_watchdog(),
        lambda: floop.stop_watchdog(),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    assert lag.count == count > 0 and not lag.running
    lag.stop()  # no-op


def test_monitors_left_running_at_exit():
    """A loop never closed, its monitors on: the interpreter still exits cleanly."""
    r = run_script(
        """
        import asyncio, fastloop
        loop = fastloop.new_event_loop()
        loop.monitor_lag(0.001)
        loop.set_slow_callback_handler(0.01, print)
        loop.start_watchdog(0.05, handler=print)
        loop.run_until_complete(asyncio.sleep(0.05))
        print("done")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "done"
    assert "Fatal" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_everything_works_after_fork():
    """A loop made before os.fork() keeps its monitors in the child (whose monitor
    thread is a new one); a new loop in the child has them too. fastloop only."""
    r = run_script(
        """
        import asyncio, os, time, fastloop

        def check(loop, lag, slow, stalls):
            def block():
                time.sleep(0.4)
            async def main():
                await asyncio.sleep(0.05)
                loop.call_soon(block)
                await asyncio.sleep(0)  # runs after block()
                await asyncio.sleep(0.1)  # the watchdog sees the loop poll again
            loop.run_until_complete(main())
            assert lag.max >= 0.3, lag
            assert [s.name for s in slow] == [block.__qualname__], slow
            assert [s.ended for s in stalls] == [False, True], stalls
            assert loop.metrics().callbacks > 0
            assert loop.utilization().active >= 0.4

        def arm(loop):
            slow, stalls = [], []
            lag = loop.monitor_lag(0.01)
            loop.set_slow_callback_handler(0.2, slow.append)
            loop.start_watchdog(0.2, resolution=0.02, handler=stalls.append)
            return lag, slow, stalls

        loop = fastloop.new_event_loop()
        armed = arm(loop)
        loop.run_until_complete(asyncio.sleep(0.05))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                check(loop, *armed)
                loop.close()
                fresh = fastloop.new_event_loop()
                check(fresh, *arm(fresh))
                fresh.close()
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        check(loop, *armed)  # the parent's monitors were not disturbed
        loop.close()
        print("ok")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok", r.stdout


# ---- exporters ----------------------------------------------------------------------------


def test_prometheus_collector_exports_the_values(floop):
    """fastloop.prometheus reads loop.metrics() and the lag monitor. fastloop only."""
    prometheus_client = pytest.importorskip(
        "prometheus_client",
        reason="needs prometheus-client, optional for fastloop (requirements-test.txt installs it)",
    )
    from fastloop.prometheus import LoopCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(LoopCollector(floop, labels={"app": "test"}))
    for _ in range(20):
        floop.call_soon(lambda: None)
    floop.call_later(60, lambda: None)

    def value(name):
        return registry.get_sample_value(name, {"app": "test"})

    assert value("fastloop_loop_callbacks_total") == 0
    assert value("fastloop_eventloop_lag_max_seconds") is None  # no lag monitor yet
    lag = floop.monitor_lag(0.01)
    floop.call_soon(time.sleep, 0.1)
    floop.run_until_complete(asyncio.sleep(0.05))
    assert value("fastloop_loop_callbacks_total") >= 21
    assert value("fastloop_loop_iterations_total") == floop.metrics().iterations
    assert value("fastloop_loop_timers") == 1
    assert value("fastloop_loop_idle_seconds_total") > 0
    assert value("fastloop_eventloop_lag_max_seconds") == lag.max >= 0.05
    assert value("fastloop_eventloop_lag_p99_seconds") == lag.percentile(99)
    assert value("fastloop_eventloop_lag_samples_total") == lag.count
    text = prometheus_client.generate_latest(registry).decode()
    assert "# TYPE fastloop_loop_transports gauge" in text
    floop.close()
    assert prometheus_client.generate_latest(registry).decode() == ""


def test_opentelemetry_instrumentation_exports_the_values(floop):
    """fastloop.otel, read through the SDK's in-memory reader. fastloop only."""
    sdk_metrics = pytest.importorskip(
        "opentelemetry.sdk.metrics",
        reason="needs opentelemetry-sdk, optional for fastloop (requirements-test.txt installs it)",
    )
    from fastloop.otel import LoopInstrumentation
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = sdk_metrics.MeterProvider(metric_readers=[reader])
    try:
        instrumentation = LoopInstrumentation(
            floop, meter_provider=provider, attributes={"loop": "main"}
        )
        lag = floop.monitor_lag(0.01)
        for _ in range(20):
            floop.call_soon(lambda: None)
        floop.call_soon(time.sleep, 0.1)
        floop.run_until_complete(asyncio.sleep(0.05))

        def points():
            data = reader.get_metrics_data()
            out = {}
            for rm in data.resource_metrics if data is not None else ():
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        for p in metric.data.data_points:
                            key = (metric.name, tuple(sorted(p.attributes.items())))
                            out[key] = p.value
            return out

        got = points()
        main = (("loop", "main"),)
        assert got[("fastloop.loop.callbacks", main)] >= 21
        assert got[("fastloop.eventloop.delay.max", main)] == lag.max >= 0.05
        assert got[("fastloop.eventloop.delay.p50", main)] == lag.percentile(50)
        idle = got[("fastloop.eventloop.time", (("loop", "main"), ("state", "idle")))]
        assert idle > 0
        assert 0 < got[("fastloop.eventloop.utilization", main)] <= 1
        instrumentation.uninstrument()
        assert not any(name.startswith("fastloop.") for name, _ in points())
    finally:
        provider.shutdown()


# ---- python -m fastloop --stats --------------------------------------------------------


def test_stats_option_prints_utilization_lag_and_slowest_callbacks(tmp_path):
    """python -m fastloop --stats: the picture at exit, and every N seconds."""
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, time

            async def slow_step():
                await asyncio.sleep(0.05)
                time.sleep(0.15)
                await asyncio.sleep(0.05)

            async def main():
                await slow_step()
                print("app done")

            asyncio.run(main())
            """
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "fastloop", "--stats", "--stats-interval", "0.1", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "app done\n"
    reports = r.stderr.split("fastloop stats: ")
    assert len(reports) >= 3, r.stderr  # at least one interval report and the final one
    final = reports[-1]
    assert final.startswith("loop 1, ran ") and ", closed" in final, final
    assert "utilization " in final and "lag, every 10 ms" in final, final
    assert f"main -> slow_step  {script}:7" in final, final
    line = next(ln for ln in final.splitlines() if "slow_step" in ln)
    assert 140 <= float(line.split()[0]) < 1000, line


def test_stats_options_errors():
    for args, message in (
        (["--stats-slow", "1", "x.py"], "--stats-slow needs --stats first"),
        (["--stats", "--stats-slow", "x", "y.py"], "--stats-slow expects a positive number"),
        (["--stats", "--stats-interval", "-1", "y.py"], "--stats-interval expects a positive"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "fastloop", *args], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_file_watchdogs_share_the_signal_and_survive_its_loss(tmp_path):
    """Two loops' file watchdogs share faulthandler's process-wide signal: one
    stopping leaves the other's dump working; and a signal unregistered behind
    the watchdog's back is reported, not sent (its default action would end the
    process). A child process, as the signal registration is process-wide."""
    out = tmp_path / "stall.txt"
    r = run_script(
        f"""
        import asyncio, faulthandler, time, fastloop
        from fastloop._health import DEFAULT_WATCHDOG_SIGNAL

        def stall_on(loop):
            async def main():
                await asyncio.sleep(0.02)
                loop.call_soon(time.sleep, 0.4)
                await asyncio.sleep(0)
                await asyncio.sleep(0.2)
            loop.run_until_complete(main())

        with open({str(out)!r}, "w") as f:
            a, b = fastloop.new_event_loop(), fastloop.new_event_loop()
            a.start_watchdog(0.2, resolution=0.02, file=f)
            b.start_watchdog(0.2, resolution=0.02, file=f)
            a.stop_watchdog()
            stall_on(b)  # b's dump still works
            f.write("--- unregistered\\n")
            f.flush()
            faulthandler.unregister(DEFAULT_WATCHDOG_SIGNAL)
            stall_on(b)  # no handler: said, not sent
            a.close()
            b.close()
        print("alive")
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "alive"
    first, second = out.read_text().split("--- unregistered\n")
    assert "in stall_on" in first and "has not polled for" in first, first
    assert "has not polled for" in second, second
    assert f"no handler for signal {int(signal.SIGRTMAX) - 3} any more" in second, second
    assert "in stall_on" not in second, second
