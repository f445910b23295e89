"""A pytest plugin that runs an asyncio test suite on fastloop, unchanged.

    pytest -p fastloop.pytest_plugin

For the whole session, the loops asyncio makes are fastloop loops: those of
``asyncio.run()``, ``asyncio.Runner()``, ``asyncio.new_event_loop()`` and
``unittest.IsolatedAsyncioTestCase``, pytest-asyncio's (its
``pytest_asyncio_loop_factories`` hook, from pytest-asyncio 1.4; the event loop
policy before that) and anyio's pytest plugin's on its asyncio backend. The
report header says so. The event loop policy in place before is put back when
the session ends.
"""

from __future__ import annotations

from asyncio import events

import pytest

import fastloop

_previous_policy = None


def pytest_configure(config: pytest.Config) -> None:
    global _previous_policy
    get_policy = getattr(events, "_get_event_loop_policy", events.get_event_loop_policy)
    _previous_policy = get_policy()
    fastloop._install()


def pytest_unconfigure(config: pytest.Config) -> None:
    set_policy = getattr(events, "_set_event_loop_policy", events.set_event_loop_policy)
    set_policy(_previous_policy)


def pytest_report_header(config: pytest.Config) -> str:
    return f"event loop: fastloop {fastloop.__version__} (fastloop.pytest_plugin)"


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config, item):
    return {"fastloop": fastloop.new_event_loop}
