"""Tasks and futures on the loop: asyncio's own (C) Task and Future, task factories,
and the usual asyncio primitives driven by the loop."""

import asyncio
import concurrent.futures
import contextvars
import inspect
import sys
import threading

import pytest

VAR = contextvars.ContextVar("VAR", default="unset")

needs_312 = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="eager tasks (eager_start, eager_task_factory) are 3.12+"
)


def test_create_task_returns_the_c_task(loop):
    async def coro():
        return 7

    task = loop.create_task(coro())
    # The C Task (_asyncio.Task), not a reimplementation or a subclass.
    assert type(task) is asyncio.Task
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 7


def test_create_future_returns_the_c_future(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_task_names(loop):
    async def coro():
        return asyncio.current_task().get_name()

    named = loop.create_task(coro(), name="my-task")
    assert named.get_name() == "my-task"
    unnamed = loop.create_task(coro())
    assert unnamed.get_name().startswith("Task-")
    assert loop.run_until_complete(named) == "my-task"
    loop.run_until_complete(unnamed)


def test_create_task_with_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "task ctx")

    async def coro():
        seen = VAR.get()
        await asyncio.sleep(0)
        VAR.set("changed")
        return seen, VAR.get()

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == ("task ctx", "changed")
    assert ctx[VAR] == "changed"
    assert VAR.get() == "unset"


def test_task_context_is_copied_at_creation(loop):
    async def coro():
        return VAR.get()

    token = VAR.set("at creation")
    try:
        task = loop.create_task(coro())
        VAR.set("after creation")
        assert loop.run_until_complete(task) == "at creation"
    finally:
        VAR.reset(token)


def test_gather(loop):
    async def work(i):
        await asyncio.sleep(0.001 * (5 - i))
        return i * i

    async def main():
        return await asyncio.gather(*(work(i) for i in range(5)))

    assert loop.run_until_complete(main()) == [0, 1, 4, 9, 16]


def test_gather_return_exceptions(loop):
    async def ok():
        return "ok"

    async def bad():
        raise ValueError("bad")

    async def main():
        return await asyncio.gather(ok(), bad(), return_exceptions=True)

    res = loop.run_until_complete(main())
    assert res[0] == "ok"
    assert isinstance(res[1], ValueError)


def test_taskgroup(loop):
    async def child(i):
        await asyncio.sleep(0.001)
        return i

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(child(i)) for i in range(10)]
        return [t.result() for t in tasks]

    assert loop.run_until_complete(main()) == list(range(10))


def test_taskgroup_failure_cancels_siblings(loop):
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failer():
        await asyncio.sleep(0.001)
        raise ValueError("child failed")

    async def main():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sleeper())
            tg.create_task(sleeper())
            tg.create_task(failer())

    with pytest.raises(ExceptionGroup) as info:
        loop.run_until_complete(main())
    assert [type(e) for e in info.value.exceptions] == [ValueError]
    assert cancelled == [True, True]


def test_queue_ping_pong(loop):
    n = 2000

    async def main():
        ping, pong = asyncio.Queue(), asyncio.Queue()

        async def echo():
            while True:
                item = await ping.get()
                if item is None:
                    return "echo done"
                await pong.put(item + 1)

        task = asyncio.create_task(echo())
        total = 0
        for i in range(n):
            await ping.put(i)
            total += await pong.get()
        await ping.put(None)
        return total, await task

    total, done = loop.run_until_complete(main())
    assert total == sum(i + 1 for i in range(n))
    assert done == "echo done"


def test_semaphore_limits_concurrency(loop):
    active = 0
    peak = 0

    async def worker(sem):
        nonlocal active, peak
        async with sem:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001)
            active -= 1

    async def main():
        sem = asyncio.Semaphore(3)
        await asyncio.gather(*(worker(sem) for _ in range(20)))

    loop.run_until_complete(main())
    assert peak == 3
    assert active == 0


def test_lock_event_condition(loop):
    out = []

    async def main():
        lock = asyncio.Lock()
        event = asyncio.Event()
        cond = asyncio.Condition()

        async def waiter(i):
            await event.wait()
            async with lock:
                out.append(i)
            async with cond:
                await cond.wait()
                out.append(("notified", i))

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0)
        event.set()
        while sum(1 for x in out if isinstance(x, int)) < 3:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        async with cond:
            cond.notify_all()
        await asyncio.gather(*tasks)

    loop.run_until_complete(main())
    assert out[:3] == [0, 1, 2]
    assert sorted(out[3:]) == [("notified", i) for i in range(3)]


@pytest.mark.timeout(10)
def test_wait_for_timeout(loop):
    async def main():
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.02)
        return loop.time() - t0

    elapsed = loop.run_until_complete(main())
    assert 0.015 <= elapsed < 2


@pytest.mark.timeout(10)
def test_wait_for_completes_in_time(loop):
    async def main():
        return await asyncio.wait_for(asyncio.sleep(0.001, "value"), 5)

    assert loop.run_until_complete(main()) == "value"


@pytest.mark.timeout(10)
def test_timeout_context_manager(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await asyncio.sleep(10)
        async with asyncio.timeout(5):
            await asyncio.sleep(0.001)
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_sleep_wakes_in_order(loop):
    out = []

    async def sleeper(d):
        await asyncio.sleep(d)
        out.append(d)

    async def main():
        await asyncio.gather(*(sleeper(d) for d in (0.03, 0.01, 0.02, 0)))

    loop.run_until_complete(main())
    assert out == [0, 0.01, 0.02, 0.03]


@pytest.mark.timeout(10)
def test_cancel_task(loop):
    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        assert task.cancel("stop it")
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        assert info.value.args == ("stop it",)
        return task

    task = loop.run_until_complete(main())
    assert task.cancelled()


def test_cancelled_task_can_clean_up_and_return(loop):
    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "cleaned up"

    async def main():
        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        return await task

    assert loop.run_until_complete(main()) == "cleaned up"


def test_cancel_run_until_complete_task_from_callback(loop):
    async def sleeper():
        await asyncio.sleep(10)

    task = loop.create_task(sleeper())
    loop.call_later(0.01, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)


def test_shield_and_wait(loop):
    async def main():
        inner = asyncio.create_task(asyncio.sleep(0.01, "inner"))
        outer = asyncio.shield(inner)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert await inner == "inner"
        t1 = asyncio.create_task(asyncio.sleep(0.001, 1))
        t2 = asyncio.create_task(asyncio.sleep(5, 2))
        done, pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {t1} and pending == {t2}
        t2.cancel()
        results = [
            await f
            for f in asyncio.as_completed([asyncio.sleep(0.002, "b"), asyncio.sleep(0.001, "a")])
        ]
        return results

    assert loop.run_until_complete(main()) == ["a", "b"]


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        assert me is not None
        assert asyncio.current_task(loop) is me
        kids = [asyncio.create_task(child(), name=f"kid{i}") for i in range(3)]
        everything = asyncio.all_tasks()
        assert everything == {me, *kids}
        assert asyncio.all_tasks(loop) == everything
        await asyncio.gather(*kids)
        return me

    main_task = loop.create_task(main())
    # Outside the running loop, all_tasks(loop) sees the pending task too.
    assert main_task in asyncio.all_tasks(loop)
    loop.run_until_complete(main_task)
    assert asyncio.all_tasks(loop) == set()
    assert asyncio.current_task(loop) is None


def test_current_task_inside_plain_callback_is_none(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.current_task()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [None]


def test_future_done_callbacks_run_via_loop_in_order(loop):
    out = []
    fut = loop.create_future()
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "cb ctx")
    fut.add_done_callback(lambda f: out.append(("a", f.result())))
    fut.add_done_callback(lambda f: out.append(("b", VAR.get())), context=ctx)
    fut.set_result(1)
    # Done callbacks are scheduled with call_soon, not called inline.
    assert out == []
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [("a", 1), ("b", "cb ctx")]


def test_wrap_future_from_thread(loop):
    async def main():
        cf = concurrent.futures.Future()
        loop.call_later(0.001, cf.set_result, "cf")
        return await asyncio.wrap_future(cf)

    assert loop.run_until_complete(main()) == "cf"


def test_run_coroutine_threadsafe(loop):
    results = []

    async def coro(x):
        await asyncio.sleep(0)
        return x + 1

    def other_thread():
        fut = asyncio.run_coroutine_threadsafe(coro(1), loop)
        results.append(fut.result(5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    assert results == [2]


def test_set_task_factory(loop):
    created = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        created.append(lp)
        return MyTask(coro, loop=lp, **kwargs)

    async def coro():
        return "via factory"

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(coro(), name="factory-task")
    assert type(task) is MyTask
    assert task.get_name() == "factory-task"
    assert created == [loop]
    # run_until_complete(coro) and asyncio.ensure_future go through the factory too.
    assert loop.run_until_complete(coro()) == "via factory"
    assert len(created) == 2
    assert loop.run_until_complete(task) == "via factory"
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    task2 = loop.create_task(coro())
    assert type(task2) is asyncio.Task
    loop.run_until_complete(task2)
    assert len(created) == 2


def test_task_factory_gets_context_keyword(loop):
    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(sorted(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def coro():
        return VAR.get()

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "factory ctx")
    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == "factory ctx"
    assert seen == [["context"]]


def test_set_task_factory_rejects_non_callable(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    assert loop.get_task_factory() is None


@needs_312
def test_eager_task_factory(loop):
    out = []

    async def coro():
        out.append("ran eagerly")
        return 1

    loop.set_task_factory(asyncio.eager_task_factory)

    async def main():
        task = asyncio.create_task(coro())
        # The coroutine ran up to completion inside create_task.
        assert out == ["ran eagerly"]
        assert task.done()
        return await task

    assert loop.run_until_complete(main()) == 1


async def started_then_resumed(out, result):
    """Notes "started", yields to the loop once, notes "resumed", returns `result`."""
    out.append("started")
    await asyncio.sleep(0)
    out.append("resumed")
    return result


@needs_312
def test_eager_start_task(loop):
    out = []

    async def main():
        task = asyncio.Task(started_then_resumed(out, 2), loop=loop, eager_start=True)
        assert out == ["started"]
        assert not task.done()
        return await task

    assert loop.run_until_complete(main()) == 2
    assert out == ["started", "resumed"]


# loop.create_task(coro, eager_start=...): asyncio's create_task takes only name= and
# context= in 3.11, 3.12 and 3.13.0 (a TypeError for anything else); from 3.14 (and
# later 3.13 releases, gh-133745) it passes other keywords on to the Task (or the task
# factory), eager_start= among them. Read from asyncio's own signature.
ASYNCIO_CREATE_TASK_PASSES_KEYWORDS = any(
    p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "eager_start"
    for p in inspect.signature(asyncio.BaseEventLoop.create_task).parameters.values()
)


@pytest.mark.parametrize("eager_start", [True, False])
def test_create_task_eager_start(loop, eager_start):
    out = []

    async def main():
        c = started_then_resumed(out, 3)
        if not ASYNCIO_CREATE_TASK_PASSES_KEYWORDS:
            with pytest.raises(TypeError):
                loop.create_task(c, eager_start=eager_start)
            c.close()
            return None
        task = loop.create_task(c, eager_start=eager_start)
        assert out == (["started"] if eager_start else [])
        return await task

    result = loop.run_until_complete(main())
    if ASYNCIO_CREATE_TASK_PASSES_KEYWORDS:
        assert result == 3 and out == ["started", "resumed"]
    else:
        assert result is None and out == []


def test_create_task_unknown_keyword(loop):
    # A TypeError on every version: from create_task, or from the Task it passes it to.
    async def coro():
        pass

    c = coro()
    try:
        with pytest.raises(TypeError):
            loop.create_task(c, no_such_keyword=1)
    finally:
        c.close()


# ---- what task introspection reads -------------------------------------------
# `python -m asyncio ps PID` / `pstree PID` (3.14) read, from outside the process,
# the C tasks each thread made and the running loop and task that _asyncio keeps
# in the thread state; asyncio.capture_call_graph() (3.14) follows the coroutine
# chain and each future's awaited-by links. fastloop's tasks are asyncio's C
# tasks, stepped by _asyncio itself, and it sets the running loop through
# _asyncio: what these tools need on every version is checked here, and the
# call graph itself where it exists.


def test_tasks_and_running_loop_are_kept_where_introspection_reads_them(loop):
    import _asyncio

    async def leaf(started):
        started.set_result(asyncio.current_task())
        await asyncio.sleep(3600)

    async def middle(started):
        await leaf(started)

    async def main():
        started = loop.create_future()
        child = asyncio.ensure_future(middle(started))
        leaf_task = await started
        me = asyncio.current_task()
        seen = {
            "running loop": _asyncio._get_running_loop() is loop,
            "current task is C": type(me) is _asyncio.Task,
            "child is current there": leaf_task is child,
            "all_tasks": {me, child} <= asyncio.all_tasks(),
            # The chain a call graph walks: task -> coroutine -> awaited coroutine.
            "chain": [
                c.cr_code.co_name
                for c in (child.get_coro(), child.get_coro().cr_await)
                if inspect.iscoroutine(c)
            ],
        }
        child.cancel()
        await asyncio.gather(child, return_exceptions=True)
        return seen

    assert loop.run_until_complete(main()) == {
        "running loop": True,
        "current task is C": True,
        "child is current there": True,
        "all_tasks": True,
        "chain": ["middle", "leaf"],
    }
    assert _asyncio._get_running_loop() is None


@pytest.mark.skipif(
    not hasattr(asyncio, "capture_call_graph"),
    reason="asyncio.capture_call_graph is new in 3.14, which cannot run here (written from "
    "CPython 3.14's Lib/asyncio/graph.py; the test above checks what it reads)",
)
def test_capture_call_graph_shows_who_awaits_whom(loop):
    async def leaf(ready):
        ready.set_result(None)
        await asyncio.sleep(3600)

    async def main():
        ready = loop.create_future()
        child = asyncio.ensure_future(leaf(ready))
        await ready
        waiter = asyncio.ensure_future(asyncio.wait_for(child, 3600))
        await asyncio.sleep(0.01)
        graph = asyncio.capture_call_graph(child)
        child.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        return graph

    graph = loop.run_until_complete(main())
    assert [e.frame.f_code.co_name for e in graph.call_stack][-1:] == ["leaf"]
    assert graph.awaited_by, "the task awaiting the child is not linked to it"
