"""Pipes and subprocesses: asyncio's own transports, on fastloop's fd watchers.

connect_read_pipe, connect_write_pipe, subprocess_exec and subprocess_shell
are asyncio's methods, and the transports they make are asyncio's Unix pipe
and subprocess transports (unix_events). These watch their fds through the
loop's private _add_reader/_add_writer, which fastloop provides with
asyncio's signatures, and learn of exits through the policy's child
watcher. Behaviour is therefore asyncio's; the data path is Python's.
"""

from __future__ import annotations

from asyncio import base_events, unix_events

_Base = base_events.BaseEventLoop
_Unix = unix_events._UnixSelectorEventLoop


class PipeMethods:
    """connect_read_pipe / connect_write_pipe and subprocesses."""

    connect_read_pipe = _Base.connect_read_pipe
    connect_write_pipe = _Base.connect_write_pipe
    _make_read_pipe_transport = _Unix._make_read_pipe_transport
    _make_write_pipe_transport = _Unix._make_write_pipe_transport
    subprocess_exec = _Base.subprocess_exec
    subprocess_shell = _Base.subprocess_shell
    _log_subprocess = _Base._log_subprocess
    _make_subprocess_transport = _Unix._make_subprocess_transport
    _child_watcher_callback = _Unix._child_watcher_callback
