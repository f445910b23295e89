"""What the server processes of the driver rows share (``bench.echo_server``,
``bench.web_server``): starting on the loop under test with a failure the
driver can quote, and the one ``READY`` line."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path


def start_or_report(loop, coro):
    """Run the server's start-up coroutine; None if it failed.

    On failure the traceback goes to stderr, then one line the driver can
    quote: what failed and where.
    """
    try:
        return loop.run_until_complete(coro)
    except Exception as exc:
        traceback.print_exc()
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        print(f"{what} (at {where})", file=sys.stderr)
        return None


def announce_ready(line: str) -> None:
    """Print the READY line, then point stdout at /dev/null.

    The server prints nothing else, and nobody reads the pipe after READY: a
    full pipe can then never block the loop.
    """
    print(line, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
