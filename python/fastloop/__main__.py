"""python -m fastloop: run an asyncio program, unchanged, on fastloop.

    python -m fastloop script.py [arg ...]
    python -m fastloop -m module [arg ...]
    python -m fastloop -c command [arg ...]
    python -m fastloop                      (asyncio's REPL, python -m asyncio, on fastloop)
    python -m fastloop --stats [--stats-interval N] [--stats-slow S] script.py ...

``--stats`` prints, at exit (and every N seconds with ``--stats-interval N``), each
loop's utilization, lag percentiles and the slowest callbacks (those of S seconds or
more, 0.05 by default), to stderr (see fastloop/_stats.py).

The program runs as ``python script.py`` (``-m module``, ``-c command``) would run
it: as ``__main__``, with the same ``sys.argv`` and ``sys.path[0]``. Before it
starts, fastloop becomes the loop asyncio makes: ``asyncio.run()``,
``asyncio.Runner()`` and ``asyncio.new_event_loop()`` give it fastloop loops (through
the event loop policy, while asyncio has policies). Interpreter options apply as
usual: ``python -X dev -m fastloop script.py`` or ``PYTHONASYNCIODEBUG=1`` turn on
the loops' debug mode, as they do asyncio's.
"""

from __future__ import annotations

import os
import runpy
import sys

USAGE = """\
usage: python -m fastloop [--stats [--stats-interval N] [--stats-slow S]]
                          [script | -m module | -c command] [arg ...]

Run an asyncio program on fastloop: asyncio.run(), asyncio.Runner() and
asyncio.new_event_loop() make fastloop loops for it. Without a program,
asyncio's REPL (python -m asyncio) runs on fastloop.

--stats             at exit, print each loop's utilization, lag percentiles
                    and slowest callbacks to stderr
--stats-interval N  also every N seconds
--stats-slow S      list callbacks that ran S seconds or more (default 0.05)
"""


def _usage_error(message: str) -> SystemExit:
    sys.stderr.write(f"{USAGE}python -m fastloop: error: {message}\n")
    return SystemExit(2)


def _positive_float(option: str, value: str | None) -> float:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        number = None
    if number is None or not number > 0 or number == float("inf"):
        raise _usage_error(f"argument {option} expects a positive number of seconds")
    return number


def _stats_options(argv: list[str]) -> tuple[dict | None, list[str]]:
    """Takes --stats and its options off the front of argv."""
    if not argv or argv[0] != "--stats":
        for option in ("--stats-interval", "--stats-slow"):
            if argv and argv[0] == option:
                raise _usage_error(f"{option} needs --stats first")
        return None, argv
    options: dict = {}
    argv = argv[1:]
    while argv and argv[0] in ("--stats-interval", "--stats-slow"):
        option = argv[0]
        value = _positive_float(option, argv[1] if len(argv) > 1 else None)
        options["interval" if option == "--stats-interval" else "slow"] = value
        argv = argv[2:]
    return options, argv


def main(argv: list[str]) -> None:
    import fastloop

    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return
    stats, argv = _stats_options(argv)
    if argv and argv[0] in ("-m", "-c") and len(argv) < 2:
        raise _usage_error(f"argument {argv[0]} expects a value")
    if argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        raise _usage_error(f"unknown option {argv[0]}")

    fastloop._install()  # the policy, without 3.14's deprecation warning for this use
    if stats is not None:
        from ._stats import StatsRecorder

        StatsRecorder(**stats).install()

    if not argv:
        sys.argv = [""]
        runpy.run_module("asyncio", run_name="__main__", alter_sys=True)
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's file first
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        sys.path[0] = ""
        code = compile(argv[1], "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        script = argv[0]
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
