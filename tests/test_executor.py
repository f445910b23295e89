"""run_in_executor, the default executor, asyncio.to_thread, shutdown_default_executor."""

import asyncio
import concurrent.futures
import contextvars
import inspect
import sys
import threading
import time

import pytest

VAR = contextvars.ContextVar("VAR", default="unset")


def shutdown_takes_timeout(loop):
    """asyncio's shutdown_default_executor takes timeout= from 3.12; fastloop's may."""
    if sys.version_info >= (3, 12):
        return True
    try:
        return "timeout" in inspect.signature(loop.shutdown_default_executor).parameters
    except (TypeError, ValueError):
        return False


def test_run_in_default_executor(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    async def main():
        fut = loop.run_in_executor(None, work, 2, 3)
        assert isinstance(fut, asyncio.Future)
        return await fut

    result, tid = loop.run_until_complete(main())
    assert result == 5
    assert tid != main_thread


def test_run_in_executor_propagates_exception(loop):
    def work():
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        loop.run_until_complete(loop.run_in_executor(None, work))


def test_run_in_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-pool") as pool:
        name = loop.run_until_complete(
            loop.run_in_executor(pool, lambda: threading.current_thread().name)
        )
    assert name.startswith("custom-pool")


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="default-pool")
    loop.set_default_executor(pool)
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("default-pool")
    # Teardown's shutdown_default_executor() joins it.


def test_set_default_executor_rejects_other_executors(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        pass

    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(NotAThreadPool())
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(object())


def test_default_executor_attribute(loop):
    # CPython's test suite (test_asyncio/utils.py close_loop) reads
    # loop._default_executor: None until first use, then a ThreadPoolExecutor.
    assert loop._default_executor is None
    loop.run_until_complete(loop.run_in_executor(None, int))
    assert isinstance(loop._default_executor, concurrent.futures.ThreadPoolExecutor)


def test_to_thread_passes_context(loop):
    def work(x):
        return x, VAR.get(), threading.get_ident()

    async def main():
        VAR.set("to_thread ctx")
        return await asyncio.to_thread(work, 1)

    x, seen, tid = loop.run_until_complete(main())
    assert (x, seen) == (1, "to_thread ctx")
    assert tid != threading.get_ident()


@pytest.mark.timeout(20)
def test_executor_result_wakes_a_sleeping_loop(loop):
    # A 10 s timer is pending; the result from the worker thread must wake the loop.
    far = loop.call_later(10, loop.stop)

    def work():
        time.sleep(0.05)
        return time.monotonic()

    async def main():
        done_at = await loop.run_in_executor(None, work)
        return time.monotonic() - done_at

    lag = loop.run_until_complete(main())
    far.cancel()
    assert lag < 1.0


def test_many_executor_calls(loop):
    async def main():
        return await asyncio.gather(*(loop.run_in_executor(None, abs, -i) for i in range(200)))

    assert loop.run_until_complete(main()) == list(range(200))


def test_shutdown_default_executor_joins_threads(loop):
    started = threading.Event()
    finished = []

    def work():
        started.set()
        time.sleep(0.05)
        finished.append(True)

    async def main():
        fut = loop.run_in_executor(None, work)
        await loop.run_in_executor(None, started.wait)
        await loop.shutdown_default_executor()
        assert finished == [True]
        await fut

    loop.run_until_complete(main())


def test_shutdown_default_executor_without_executor(loop):
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_after_shutdown(loop):
    loop.run_until_complete(loop.run_in_executor(None, int))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, int)


def test_run_in_executor_after_shutdown_without_executor(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
        loop.run_in_executor(None, int)


def test_custom_executor_still_usable_after_default_shutdown(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert loop.run_until_complete(loop.run_in_executor(pool, abs, -3)) == 3


def test_shutdown_default_executor_with_timeout(loop):
    if not shutdown_takes_timeout(loop):
        pytest.skip("asyncio's shutdown_default_executor() takes no timeout before Python 3.12")
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0.01))
    t0 = time.monotonic()
    loop.run_until_complete(loop.shutdown_default_executor(timeout=5))
    assert time.monotonic() - t0 < 5


def test_shutdown_default_executor_default_timeout(loop):
    """Without a timeout, shutdown_default_executor() waits as long as asyncio's does:
    its default is asyncio's (None from 3.12: the threads get as long as they need;
    asyncio.run passes constants.THREAD_JOIN_TIMEOUT itself). Waiting out a real
    default would take minutes, so the signatures are compared."""
    reference = inspect.signature(asyncio.BaseEventLoop.shutdown_default_executor)
    if "timeout" not in reference.parameters:
        pytest.skip("asyncio's shutdown_default_executor() takes no timeout before Python 3.12")
    ours = inspect.signature(loop.shutdown_default_executor).parameters["timeout"]
    assert ours.default == reference.parameters["timeout"].default


def test_close_shuts_down_default_executor_without_waiting(loop):
    release = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    loop.run_in_executor(None, release.wait, 5)
    t0 = time.monotonic()
    loop.close()
    assert time.monotonic() - t0 < 1.0
    # close() shut the executor down (no new work accepted) without joining it.
    with pytest.raises(RuntimeError):
        pool.submit(int)
    release.set()
    pool.shutdown(wait=True)
