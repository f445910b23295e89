"""fastloop: a fast drop-in asyncio event loop (C++ core on libuv).

Switch an asyncio program to it in one of three ways::

    asyncio.set_event_loop_policy(fastloop.EventLoopPolicy())
    asyncio.run(main())

    fastloop.run(main())

    with asyncio.Runner(loop_factory=fastloop.new_event_loop) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
from asyncio import events

from ._loop import Loop

__all__ = ["Loop", "new_event_loop", "run", "EventLoopPolicy", "install"]
__version__ = "0.1.0"


def new_event_loop() -> Loop:
    """Return a new fastloop event loop."""
    return Loop()


def run(main, *, debug=None):
    """Run a coroutine to completion on a new fastloop loop, as asyncio.run()."""
    if events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An asyncio event loop policy whose loops are fastloop loops.

    It derives from asyncio's own default policy, so what asyncio and its
    test suite expect of a policy (get/set_child_watcher on Unix) is there.
    """

    def _loop_factory(self) -> Loop:
        return Loop()


def install() -> None:
    """Make fastloop the loop of asyncio.run() and asyncio.new_event_loop()."""
    asyncio.set_event_loop_policy(EventLoopPolicy())
