"""fastloop's entry points: fastloop.run, asyncio.Runner(loop_factory=...), the
EventLoopPolicy, fastloop.install(), and Loop as a subclassable, patchable class.

These are fastloop-only by nature (asyncio's loop has no such entry points), so they
do not use the parametrized ``loop`` fixture; each test creates and closes its own
fastloop loops. The autouse fixture in conftest resets the event loop policy after
every test.
"""

import asyncio
import sys

import pytest


@pytest.fixture
def fastloop():
    import fastloop

    return fastloop


async def running_loop():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def test_public_names(fastloop):
    for name in ("Loop", "new_event_loop", "run", "EventLoopPolicy", "install"):
        assert hasattr(fastloop, name), name
    assert isinstance(fastloop.Loop, type)


def test_new_event_loop_is_an_abstract_event_loop(fastloop):
    lp = fastloop.new_event_loop()
    try:
        assert isinstance(lp, fastloop.Loop)
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert not lp.is_running() and not lp.is_closed()
    finally:
        lp.close()
    assert lp.is_closed()


def test_loop_class_can_be_instantiated_directly(fastloop):
    lp = fastloop.Loop()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, "direct")) == "direct"
    finally:
        lp.close()


def test_run_returns_the_result_on_a_fastloop_loop(fastloop):
    async def main():
        lp = await running_loop()
        return lp, 42

    lp, result = fastloop.run(main())
    assert result == 42
    assert isinstance(lp, fastloop.Loop)
    # run() closed its loop and left no loop running or set.
    assert lp.is_closed()
    assert asyncio._get_running_loop() is None


def test_run_propagates_exceptions(fastloop):
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        fastloop.run(main())


def test_run_debug_flag(fastloop):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert fastloop.run(main(), debug=True) is True
    assert fastloop.run(main(), debug=False) is False


def test_run_finalizes_asyncgens_and_executor(fastloop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("agen closed")

    async def main():
        g = agen()
        await g.__anext__()
        await asyncio.get_running_loop().run_in_executor(None, log.append, "executor ran")
        return g

    g = fastloop.run(main())
    assert log == ["executor ran", "agen closed"]
    del g


def test_run_cancels_leftover_tasks(fastloop):
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        asyncio.create_task(sleeper())
        await asyncio.sleep(0)

    fastloop.run(main())
    assert cancelled == [True]


def test_run_rejects_a_non_coroutine(fastloop):
    with pytest.raises(ValueError, match="a coroutine was expected"):
        fastloop.run(42)


def test_run_inside_a_running_loop(fastloop):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                fastloop.run(coro)
        finally:
            coro.close()
        return "ok"

    assert fastloop.run(main()) == "ok"


def test_runner_with_loop_factory(fastloop):
    with asyncio.Runner(loop_factory=fastloop.new_event_loop) as runner:
        lp = runner.get_loop()
        assert isinstance(lp, fastloop.Loop)
        assert runner.run(running_loop()) is lp
        # Several runs on the same loop.
        assert runner.run(asyncio.sleep(0, "second")) == "second"
    assert lp.is_closed()


def test_event_loop_policy_used_by_the_standard_run(fastloop):
    policy = fastloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    asyncio.set_event_loop_policy(policy)
    lp = asyncio.run(running_loop())
    assert isinstance(lp, fastloop.Loop)
    assert lp.is_closed()


def test_event_loop_policy_new_event_loop(fastloop):
    policy = fastloop.EventLoopPolicy()
    asyncio.set_event_loop_policy(policy)
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, fastloop.Loop)
        asyncio.set_event_loop(lp)
        assert asyncio.get_event_loop_policy().get_event_loop() is lp
    finally:
        asyncio.set_event_loop(None)
        lp.close()


def test_install(fastloop):
    fastloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), fastloop.EventLoopPolicy)
    lp = asyncio.run(running_loop())
    assert isinstance(lp, fastloop.Loop)


def test_loop_instances_take_attributes(fastloop):
    lp = fastloop.new_event_loop()
    try:
        lp.some_attribute = "set by a user"
        assert lp.some_attribute == "set by a user"
    finally:
        lp.close()


def test_call_soon_patched_on_an_instance_is_used_by_futures(fastloop):
    # The C Future schedules done-callbacks with loop.call_soon, looked up on the
    # loop each time: CPython's own tests patch it on the instance this way.
    lp = fastloop.new_event_loop()
    try:
        calls = []
        original = lp.call_soon

        def spy(callback, *args, context=None):
            calls.append(callback)
            return original(callback, *args, context=context)

        lp.call_soon = spy
        fut = lp.create_future()
        seen = []
        fut.add_done_callback(seen.append)
        fut.set_result(1)
        assert calls == [seen.append]
        lp.run_until_complete(asyncio.sleep(0))
        assert seen == [fut]
        # Tasks step through the patched call_soon as well.
        calls.clear()
        assert lp.run_until_complete(asyncio.sleep(0, "x")) == "x"
        assert calls
        del lp.call_soon
        assert lp.call_soon == original
    finally:
        lp.close()


def test_subclass_overriding_call_soon(fastloop):
    class MyLoop(fastloop.Loop):
        def __init__(self):
            super().__init__()
            self.scheduled = 0

        def call_soon(self, callback, *args, context=None):
            self.scheduled += 1
            return super().call_soon(callback, *args, context=context)

    lp = MyLoop()
    try:
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert lp.run_until_complete(asyncio.sleep(0, "sub")) == "sub"
        assert lp.scheduled > 0
    finally:
        lp.close()


def test_subclass_instance_patch(fastloop):
    class MyLoop(fastloop.Loop):
        pass

    lp = MyLoop()
    try:
        got = []
        lp.call_soon = lambda cb, *a, context=None: got.append(cb)
        fut = lp.create_future()
        fut.add_done_callback(print)
        fut.set_result(None)
        assert got == [print]
    finally:
        lp.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_run_with_loop_factory_argument(fastloop):
    lp = asyncio.run(running_loop(), loop_factory=fastloop.new_event_loop)
    assert isinstance(lp, fastloop.Loop)


def test_policy_names_warn_only_where_asyncio_deprecates_policies(fastloop, monkeypatch):
    """The policy entry points warn as asyncio's policy classes do from 3.14 (policies go
    in 3.16), and not before. 3.14 cannot run here: the switch the module reads is
    flipped to see what it does there."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if not fastloop._POLICIES_DEPRECATED:
            assert fastloop.EventLoopPolicy.__name__ == "EventLoopPolicy"
            assert fastloop.install.__name__ == "install"
    monkeypatch.setattr(fastloop, "_POLICIES_DEPRECATED", True)
    for name in ("EventLoopPolicy", "install"):
        with pytest.warns(DeprecationWarning, match=rf"'fastloop\.{name}' is deprecated .* 3\.16"):
            getattr(fastloop, name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fastloop.nothing  # noqa: B018


def test_importing_fastloop_looks_up_no_deprecated_asyncio_name():
    """Importing fastloop (and using its policy) reaches asyncio's policy class by its
    private name: asyncio 3.14 warns on asyncio.DefaultEventLoopPolicy, 3.12 on
    get_child_watcher. Run in a fresh interpreter with warnings as errors."""
    import subprocess

    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import asyncio, fastloop\n"
        "print(fastloop.run(asyncio.sleep(0, 'ok')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
