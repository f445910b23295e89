"""python -m fastloop: run an asyncio program, unchanged, on fastloop.

    python -m fastloop script.py [arg ...]
    python -m fastloop -m module [arg ...]
    python -m fastloop -c command [arg ...]
    python -m fastloop                      (asyncio's REPL, python -m asyncio, on fastloop)

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
usage: python -m fastloop [script | -m module | -c command] [arg ...]

Run an asyncio program on fastloop: asyncio.run(), asyncio.Runner() and
asyncio.new_event_loop() make fastloop loops for it. Without a program,
asyncio's REPL (python -m asyncio) runs on fastloop.
"""


def _usage_error(message: str) -> SystemExit:
    sys.stderr.write(f"{USAGE}python -m fastloop: error: {message}\n")
    return SystemExit(2)


def main(argv: list[str]) -> None:
    import fastloop

    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return
    if argv and argv[0] in ("-m", "-c") and len(argv) < 2:
        raise _usage_error(f"argument {argv[0]} expects a value")
    if argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        raise _usage_error(f"unknown option {argv[0]}")

    fastloop._install()  # the policy, without 3.14's deprecation warning for this use

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
