"""The event loops a benchmark can run on, and how to make one.

Only ``bench.worker`` (the subprocess) imports a loop's module: the parent
process never does, so a loop that crashes on import or leaves global state
behind cannot disturb the others.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # asyncio is imported where a loop is made (saves start-up time elsewhere)
    import asyncio


@dataclass(frozen=True)
class LoopSpec:
    name: str
    module: str
    factory: str  # attribute of `module` that returns a new, unstarted loop
    about: str  # one line for the report
    install_hint: str  # said when the module cannot be imported
    # A variant of another loop (the same loop with something turned on): it
    # joins the rows that name it in Benchmark.also_on when that loop is run,
    # and the tables show its ratio to that loop.
    variant_of: str | None = None
    # Attribute of `module`: summary(loop) -> dict, read after a sample (not
    # timed) and kept in the sample's extra data under "health".
    summary: str | None = None


LOOPS: dict[str, LoopSpec] = {
    spec.name: spec
    for spec in (
        # The default loop on Linux is the selector loop; naming it avoids any
        # policy a sitecustomize might have installed.
        LoopSpec(
            "asyncio",
            "asyncio",
            "SelectorEventLoop",
            "CPython's own loop (the reference)",
            "part of CPython",
        ),
        LoopSpec(
            "uvloop",
            "uvloop",
            "new_event_loop",
            "Cython on libuv",
            "pip install uvloop (in requirements-dev.txt)",
        ),
        LoopSpec("rloop", "rloop", "new_event_loop", "Rust on mio", "pip install rloop"),
        LoopSpec(
            "zuvloop",
            "zuvloop",
            "new_event_loop",
            "Zig on libuv",
            "pip install zuvloop (needs Python >= 3.14)",
        ),
        LoopSpec(
            "fastloop",
            "fastloop",
            "new_event_loop",
            "C++ on libuv (this project)",
            "make build (installs fastloop into .venv)",
        ),
        # fastloop with its loop-health features on (bench/health_loop.py): the
        # lag monitor, a slow-callback handler and the stall watchdog.
        LoopSpec(
            "fastloop+health",
            "bench.health_loop",
            "new_event_loop",
            "fastloop with monitor_lag(0.01), a slow-callback handler (0.1 s) "
            "and start_watchdog(1.0) on",
            "make build (installs fastloop into .venv)",
            variant_of="fastloop",
            summary="summary",
        ),
    )
}

# The columns of a plain `python -m bench`. A loop that is not installed shows
# "n/a" with the reason; zuvloop is left out because it needs Python >= 3.14.
DEFAULT_LOOPS: tuple[str, ...] = ("asyncio", "uvloop", "rloop", "fastloop")

# The loops the ratio columns and targets compare.
SUBJECT = "fastloop"
# fastloop with the lag monitor, the slow-callback handler and the watchdog on:
# a column of its own on the rows that name it (Benchmark.also_on).
HEALTH = "fastloop+health"
BASELINES: tuple[str, ...] = ("asyncio", "uvloop")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Import the loop's module and make a new loop (in the worker only)."""
    spec = LOOPS[name]
    module = importlib.import_module(spec.module)
    return getattr(module, spec.factory)()


def summary(name: str, loop: asyncio.AbstractEventLoop) -> dict | None:
    """What the loop's spec says about a loop after a sample (LoopSpec.summary), if anything."""
    spec = LOOPS[name]
    if spec.summary is None:
        return None
    return getattr(importlib.import_module(spec.module), spec.summary)(loop)


def version(name: str) -> str:
    """The version of an already importable loop."""
    spec = LOOPS[name]
    if spec.module == "asyncio":
        return f"Python {platform.python_version()}"
    module = importlib.import_module(spec.module)
    found = getattr(module, "__version__", None)
    if found is None:
        from importlib import metadata

        try:
            found = metadata.version(spec.module)
        except metadata.PackageNotFoundError:
            found = "unknown version"
    return str(found)
