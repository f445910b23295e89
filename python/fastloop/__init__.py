"""fastloop: a fast drop-in asyncio event loop (C++ core on libuv).

Run an asyncio program on it::

    fastloop.run(main())

    with asyncio.Runner(loop_factory=fastloop.new_event_loop) as runner:
        runner.run(main())

    asyncio.run(main(), loop_factory=fastloop.new_event_loop)  # Python 3.12+

The policy way, ``asyncio.set_event_loop_policy(fastloop.EventLoopPolicy())``
or ``fastloop.install()``, works while asyncio has policies; like asyncio's
own policy classes, it is deprecated from Python 3.14 (asyncio removes
policies in 3.16).
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from asyncio import events, unix_events

from ._health import LagMonitor, LoopMetrics, SlowCallback, StallReport, Utilization
from ._loop import Loop

__all__ = [
    "Loop",
    "new_event_loop",
    "run",
    "EventLoopPolicy",
    "install",
    "LagMonitor",
    "LoopMetrics",
    "SlowCallback",
    "StallReport",
    "Utilization",
]
__version__ = "0.1.0"

# asyncio deprecates its policy system in 3.14 and removes it in 3.16.
_POLICIES_DEPRECATED = sys.version_info >= (3, 14)


def new_event_loop() -> Loop:
    """Return a new fastloop event loop."""
    return Loop()


def run(main, *, debug=None, loop_factory=None):
    """Run a coroutine to completion on a new fastloop loop, as asyncio.run().

    ``loop_factory`` makes the loop (``fastloop.new_event_loop`` by default),
    as in ``asyncio.run()`` and ``uvloop.run()``; what it makes must be a
    ``fastloop.Loop`` (a subclass, say), or TypeError is raised.
    """
    if events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    factory = new_event_loop if loop_factory is None else _fastloop_only(loop_factory)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


def _fastloop_only(loop_factory):
    def make():
        loop = loop_factory()
        if not isinstance(loop, Loop):
            close = getattr(loop, "close", None)
            if callable(close):
                close()
            raise TypeError(f"fastloop.run() uses fastloop loops; loop_factory made {loop!r}")
        return loop

    return make


# asyncio's default Unix policy under its private names: asyncio 3.14 warns when
# asyncio.DefaultEventLoopPolicy is looked up, which importing fastloop must not do.
try:
    _AsyncioPolicy = unix_events._UnixDefaultEventLoopPolicy
except AttributeError:  # in case 3.14+ keeps only this name
    _AsyncioPolicy = unix_events._DefaultEventLoopPolicy


class _EventLoopPolicy(_AsyncioPolicy):
    """An asyncio event loop policy whose loops are fastloop loops.

    It derives from asyncio's own default policy, so what asyncio and its
    test suite expect of a policy (get/set_child_watcher before 3.14) is there.
    """

    def _loop_factory(self) -> Loop:
        return Loop()


_EventLoopPolicy.__name__ = _EventLoopPolicy.__qualname__ = "EventLoopPolicy"


def _install() -> None:
    """Make fastloop the loop of asyncio.run() and asyncio.new_event_loop()."""
    # The private setter where asyncio has one (3.14): the deprecation was
    # already said when fastloop.install was looked up.
    set_policy = getattr(events, "_set_event_loop_policy", asyncio.set_event_loop_policy)
    set_policy(_EventLoopPolicy())


_install.__name__ = _install.__qualname__ = "install"
_DEPRECATED = {"EventLoopPolicy": _EventLoopPolicy, "install": _install}


def __getattr__(name):
    try:
        value = _DEPRECATED[name]
    except KeyError:
        raise AttributeError(f"module 'fastloop' has no attribute {name!r}") from None
    if _POLICIES_DEPRECATED:
        warnings.warn(
            f"'fastloop.{name}' is deprecated and slated for removal in Python 3.16, as "
            "asyncio's policies are; use fastloop.run() or "
            "asyncio.Runner(loop_factory=fastloop.new_event_loop)",
            DeprecationWarning,
            stacklevel=2,
        )
    return value
