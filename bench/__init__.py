"""Side-by-side benchmarks of asyncio event loops: asyncio, uvloop, rloop and fastloop.

Run with ``python -m bench`` (``make bench`` builds and installs fastloop first).
Each (benchmark, loop) sample runs in a fresh subprocess (``bench.worker``); the
parent (``bench.runner``) interleaves the loops over several repeats and
``bench.report`` prints the table and writes JSON, Markdown and a PNG to
``bench/results/``. Benchmarks are rows of ``bench.registry.BENCHMARKS``; loops
are entries of ``bench.loops.LOOPS``.
"""
