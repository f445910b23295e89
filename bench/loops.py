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
    )
}

# The columns of a plain `python -m bench`. A loop that is not installed shows
# "n/a" with the reason; zuvloop is left out because it needs Python >= 3.14.
DEFAULT_LOOPS: tuple[str, ...] = ("asyncio", "uvloop", "rloop", "fastloop")

# The loops the ratio columns and targets compare.
SUBJECT = "fastloop"
BASELINES: tuple[str, ...] = ("asyncio", "uvloop")


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """Import the loop's module and make a new loop (in the worker only)."""
    spec = LOOPS[name]
    module = importlib.import_module(spec.module)
    return getattr(module, spec.factory)()


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
