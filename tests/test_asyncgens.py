"""Async generators: the loop's sys.set_asyncgen_hooks while running, finalization of
abandoned generators (aclose on GC), and shutdown_asyncgens()."""

import asyncio
import gc
import sys

import pytest


def make_agen(log, *, async_cleanup=False, fail_on_close=False):
    async def agen():
        try:
            for i in range(10):
                yield i
        finally:
            if async_cleanup:
                await asyncio.sleep(0)
            log.append("finalized")
            if fail_on_close:
                raise ValueError("error while closing")

    return agen()


def test_shutdown_asyncgens_finalizes_suspended_generators(loop):
    log = []

    async def main():
        gens = [make_agen(log), make_agen(log, async_cleanup=True)]
        for g in gens:
            assert await g.__anext__() == 0
        return gens

    gens = loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized", "finalized"]
    assert all(g.ag_frame is None for g in gens)


def test_shutdown_asyncgens_without_generators(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())


def test_shutdown_asyncgens_reports_close_errors(loop, exc_handler_calls):
    log = []

    async def main():
        g = make_agen(log, fail_on_close=True)
        await g.__anext__()
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["asyncgen"] is g
    exc_handler_calls.clear()


def test_generator_started_after_shutdown_warns(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def main():
        return [i async for i in make_agen([])]

    with pytest.warns(ResourceWarning, match="was scheduled after loop.shutdown_asyncgens"):
        assert loop.run_until_complete(main()) == list(range(10))


def test_asyncgen_hooks_set_while_running_and_restored(loop):
    def my_firstiter(agen):
        pass

    def my_finalizer(agen):
        pass

    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=my_firstiter, finalizer=my_finalizer)
    try:
        seen = []

        async def main():
            seen.append(sys.get_asyncgen_hooks())

        loop.run_until_complete(main())
        hooks = seen[0]
        assert callable(hooks.firstiter) and callable(hooks.finalizer)
        assert hooks.firstiter is not my_firstiter
        assert hooks.finalizer is not my_finalizer
        assert sys.get_asyncgen_hooks() == (my_firstiter, my_finalizer)

        # Restored after run_forever is left by an exception, too.
        def interrupt():
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert sys.get_asyncgen_hooks() == (my_firstiter, my_finalizer)
    finally:
        sys.set_asyncgen_hooks(*old)


def test_abandoned_generator_is_closed_by_the_loop(loop):
    log = []

    async def main():
        g = make_agen(log, async_cleanup=True)
        assert await g.__anext__() == 0
        del g  # the finalizer hook schedules aclose() on the loop
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)
        return list(log)

    assert loop.run_until_complete(main()) == ["finalized"]


def test_generator_exhausted_normally_needs_no_finalization(loop):
    log = []

    async def main():
        return [i async for i in make_agen(log)]

    assert loop.run_until_complete(main()) == list(range(10))
    assert log == ["finalized"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]


def test_generator_in_task_closed_by_shutdown(loop):
    log = []
    holder = []

    async def consumer():
        g = make_agen(log, async_cleanup=True)
        holder.append(g)
        async for _ in g:
            await asyncio.sleep(10)

    task = loop.create_task(consumer())
    loop.run_until_complete(asyncio.sleep(0.01))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    # The task was cancelled while the generator was suspended at a yield;
    # the generator itself is still alive in `holder`.
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]
