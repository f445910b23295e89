"""Put the loop under test behind every door CPython's asyncio suite opens.

The suite gets its loops in three ways, and this module covers the first two:

1. Through the policy: ``asyncio.new_event_loop()``, ``asyncio.run()``,
   ``asyncio.Runner`` and ``IsolatedAsyncioTestCase`` all end in
   ``get_event_loop_policy().new_event_loop()``. Modules reset the policy with
   ``set_event_loop_policy(None)``, after which asyncio instantiates
   ``asyncio.DefaultEventLoopPolicy`` again, so that name is patched as well.
2. Through ``create_event_loop()`` on the test classes (test_events and
   friends): every TestCase class that has one gets it overridden.
3. Mock-time ``test_utils.TestLoop`` and explicitly constructed
   ``asyncio.BaseEventLoop``/``SelectorEventLoop``: left alone on purpose, those
   tests test asyncio's own loop. Counting the loops the factory builds tells
   how many tests really ran on the loop under test.
"""

from __future__ import annotations

import asyncio
import sys
import unittest

LOOPS = ("asyncio", "fastloop", "uvloop")

# Loops built by the loop-under-test factory in this process; the child reads
# it around each test to tell whether the test ran on the loop under test.
created = 0
# The classes of those loops, "module.qualname", to show what really ran.
created_types: set[str] = set()


def _count(loop):
    global created
    created += 1
    cls = type(loop)
    created_types.add(f"{cls.__module__}.{cls.__qualname__}")
    return loop


def policy_and_factory(name: str):
    """Return (policy class, loop factory) of the named loop."""
    if name == "asyncio":
        policy = asyncio.DefaultEventLoopPolicy
        return policy, policy._loop_factory
    if name == "fastloop":
        import fastloop

        return fastloop.EventLoopPolicy, fastloop.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.EventLoopPolicy, uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}; expected one of {LOOPS}")


def install(name: str):
    """Make `name` the loop of every policy-made loop; return its counting factory."""
    base_policy, base_factory = policy_and_factory(name)

    def new_event_loop():
        return _count(base_factory())

    class ConformancePolicy(base_policy):
        """The loop's own policy, counting the loops it makes."""

        def new_event_loop(self):
            return _count(super().new_event_loop())

    ConformancePolicy.__name__ = ConformancePolicy.__qualname__ = f"{name}_ConformancePolicy"
    asyncio.DefaultEventLoopPolicy = ConformancePolicy
    asyncio.set_event_loop_policy(ConformancePolicy())
    return new_event_loop


def _is_windows_only(cls: type) -> bool:
    name = cls.__name__
    return "Proactor" in name or "Windows" in name


def hook_create_event_loop(module, factory) -> tuple[list[str], set[type]]:
    """Make every TestCase class of `module` with a `create_event_loop` use `factory`.

    Classes that differ only in the selector they used to pick (test_events
    has Select/Poll/EPoll variants with the same bases) would now run the same
    tests on the same loop: all but the first of each group are returned as
    duplicates, for the caller to leave out. Returns (hooked class names,
    duplicate classes).
    """
    hooked: dict[tuple, type] = {}
    duplicates: set[type] = set()
    for obj in list(vars(module).values()):
        if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
            continue
        if not callable(getattr(obj, "create_event_loop", None)):
            continue
        if getattr(obj, "__unittest_skip__", False) or _is_windows_only(obj):
            continue
        if hooked.setdefault(obj.__bases__, obj) is not obj:
            duplicates.add(obj)
            continue
        obj.create_event_loop = lambda self: factory()
    return [cls.__name__ for cls in hooked.values()], duplicates


def qualify(module: str) -> str:
    """The importable name of a module given as `test_tasks` or as a dotted name."""
    return module if "." in module else f"test.test_asyncio.{module}"


def describe(name: str) -> str:
    """One line naming the loop and its version, for the report header."""
    if name == "asyncio":
        return f"asyncio (CPython {sys.version.split()[0]})"
    try:
        mod = __import__(name)
    except ImportError as exc:
        return f"{name} (not importable: {exc})"
    return f"{name} {getattr(mod, '__version__', '?')}"
