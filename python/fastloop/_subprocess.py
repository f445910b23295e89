"""Subprocesses: asyncio's subprocess transport, spawned and reaped natively.

The transport is asyncio's BaseSubprocessTransport (protocol callbacks, their
order, ``_wait``, ``close`` killing a running child), with three parts of its
own:

- the child starts with ``_core._spawn`` (posix_spawn: vfork-speed whatever
  the size of this process; see cpp/spawn.hpp). Options posix_spawn cannot
  express (``preexec_fn``, ``user``, ``group``, ``extra_groups``, ``umask``,
  ``pipesize``, or any keyword we do not know) go through ``subprocess.Popen``
  as on asyncio's loop, so they behave, and fail, exactly as there. So does a
  spawn while ``subprocess.Popen`` has been replaced (a mock, say). As with
  Popen, the program is looked for in PATH by children (the one posix_spawnp
  makes, or one per path tried), never by a look-up on the loop thread, and a
  bad argument or a failed exec raises what Popen raises;
- the exit is watched through a pidfd on the loop (no thread per child and no
  SIGCHLD handler, so other code's children are left alone), then reaped with
  waitpid. Without pidfds (Linux < 5.3), a thread waits, as asyncio's
  ThreadedChildWatcher does. A child watcher installed in the policy that may
  reap any child (FastChildWatcher) is used instead, as on asyncio's loop;
- the pipes are the native pipe transports (the loop's connect_*_pipe).

A child still running when the loop closes is reaped, without blocking, at a
later spawn or loop close, as subprocess.Popen does with its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from asyncio import base_events, base_subprocess, events, log, unix_events

from . import _core

_POPEN = subprocess.Popen  # to notice a replaced one (a mock, say)
_PIPE = subprocess.PIPE
_STDOUT = subprocess.STDOUT
_DEVNULL = subprocess.DEVNULL

# Popen keywords the native spawn takes, with their defaults. A keyword outside
# this set, or one of _POPEN_ONLY at a value other than its default, makes the
# spawn go through subprocess.Popen.
_NATIVE_DEFAULTS = {
    "executable": None,
    "cwd": None,
    "env": None,
    "close_fds": True,
    "pass_fds": (),
    "start_new_session": False,
    "restore_signals": True,
    "process_group": None,
}
_POPEN_ONLY = {
    "preexec_fn": None,
    "user": None,
    "group": None,
    "extra_groups": None,
    "umask": -1,
    "pipesize": -1,
    "startupinfo": None,
    "creationflags": 0,
}


def _native_options(kwargs):
    """The keywords for _spawn, or None when only Popen can honour them."""
    options = dict(_NATIVE_DEFAULTS)
    for name, value in kwargs.items():
        if name in _NATIVE_DEFAULTS:
            options[name] = value
        elif name not in _POPEN_ONLY or value != _POPEN_ONLY[name]:
            return None
    return options


class Child:
    """The ``subprocess.Popen``-shaped handle of a natively spawned child.

    It is what asyncio's transport calls (``pid``, ``returncode``, ``poll``,
    ``send_signal``, ``terminate``, ``kill``, the pipe files) and what
    ``get_extra_info('subprocess')`` returns. Only the transport reaps the
    child: ``poll`` looks without reaping, so the exit status stays for it.
    """

    def __init__(self, args, pid, stdin, stdout, stderr):
        self.args = args
        self.pid = pid
        self.returncode = None
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self):
        return f"<{type(self).__name__}: returncode: {self.returncode} args: {self.args!r}>"

    def poll(self):
        if self.returncode is not None:
            return self.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None
        if info is None or info.si_pid == 0:
            return None
        if info.si_code == os.CLD_EXITED:
            return info.si_status
        return -info.si_status

    def send_signal(self, sig):
        # Not reaped yet (returncode is set when it is), so the pid is still ours.
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout=None):
        """Block until the child exits (Popen.wait); reaps it."""
        if self.returncode is None:
            if timeout is not None:
                deadline = time.monotonic() + timeout
                delay = 0.0005
                while self.poll() is None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise subprocess.TimeoutExpired(self.args, timeout)
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 0.05)
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                return self.returncode  # reaped meanwhile (by the transport)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def _exec_list(executable, env):
    """The paths Popen's child execs in turn: the name itself when it holds a '/', else
    the name joined to each entry of the PATH the child searches (its env's when given).
    Only strings are made here: the search itself happens in children."""
    executable = os.fsencode(executable)
    if os.path.dirname(executable):
        return [executable]
    return [os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env)]


# How this Python's Popen names things in its errors, read from its own code:
# cwd only for a failed chdir(cwd) since gh-104522 (3.11.8, 3.12.2, 3.13), for
# any failure before exec until then; stdout=STDOUT refused since 3.13.
_POPEN_NAMES_CWD_FOR_CHDIR_ONLY = "noexec:chdir" in _POPEN._execute_child.__code__.co_consts
_POPEN_REFUSES_STDOUT_STDOUT = (
    "STDOUT can only be used for stderr" in _POPEN.__init__.__code__.co_consts
)


def _popen_posix_spawns(executable, close_fds, pass_fds, cwd, fds, new_session, process_group):
    """Whether subprocess.Popen would start this child with os.posix_spawn (its own
    condition, on this Python), which names the program in more of its errors."""
    return bool(
        getattr(subprocess, "_USE_POSIX_SPAWN", False)
        and os.path.dirname(os.fsencode(executable))
        and (not close_fds or getattr(subprocess, "_HAVE_POSIX_SPAWN_CLOSEFROM", False))
        and not pass_fds
        and cwd is None
        and all(isinstance(fd, int) and (fd == -1 or fd > 2) for fd in fds)
        and not new_session
        and process_group is None
    )


def _error_names(executable, cwd, posix_spawns):
    """What Popen's OSError names when the spawn fails at each stage (cpp/spawn.hpp,
    SpawnStage): the exec, chdir(cwd), another set-up step in the child, a set-up
    refused before the child. None: nothing."""
    if posix_spawns:  # os.posix_spawn (cwd is None): errors from the child name the path
        return (executable, None, executable, None)
    setup = None if _POPEN_NAMES_CWD_FOR_CHDIR_ONLY else cwd
    return (executable, cwd, setup, setup)


def _searches_another_path(args, shell, options):
    """A bare program name looked for in an ``env`` PATH other than the process's own.

    posix_spawnp can only search the process's own PATH; trying each entry with
    a posix_spawn of its own costs a child per miss (5x slower than Popen for a
    program in the ninth entry). Popen's child tries them all in one fork, as
    on asyncio's loop, so such a spawn goes through it.
    """
    env = options["env"]
    if env is None or shell:
        return False
    try:
        executable = options["executable"]
        if executable is None:
            executable = args if isinstance(args, (str, bytes, os.PathLike)) else list(args)[0]
        if os.path.dirname(os.fsencode(executable)):
            return False
        return os.get_exec_path(env) != os.get_exec_path()
    except Exception:  # a bad argument: the native spawn raises what Popen would
        return False


def _env_list(env):
    if env is None:
        return None
    entries = []
    for key, value in env.items():
        key = os.fsencode(key)
        if b"=" in key:
            raise ValueError("illegal environment variable name")
        entries.append(key + b"=" + os.fsencode(value))
    return entries


def _stdio_fd(spec):
    if isinstance(spec, int):
        return spec
    return spec.fileno()


def spawn(
    args,
    shell,
    stdin,
    stdout,
    stderr,
    executable,
    cwd,
    env,
    close_fds,
    pass_fds,
    start_new_session,
    restore_signals,
    process_group,
):
    """Start the child as subprocess.Popen would (POSIX); a Child."""
    if stdout is _STDOUT and _POPEN_REFUSES_STDOUT_STDOUT:
        raise ValueError("STDOUT can only be used for stderr")
    if isinstance(args, (str, bytes)):
        args = [args]
    elif isinstance(args, os.PathLike):
        if shell:
            raise TypeError("path-like args is not allowed when shell is true")
        args = [args]
    else:
        args = list(args)
    if shell:
        args = ["/bin/sh", "-c", *args]
        if executable:
            args[0] = executable
    if executable is None:
        executable = args[0]
    if pass_fds and not close_fds:
        warnings.warn("pass_fds overriding close_fds.", RuntimeWarning, stacklevel=4)
        close_fds = True

    child_fds = []  # the child's ends, closed here once it has them
    ours = [None, None, None]  # the parent's pipe ends
    fds = [-1, -1, -1]
    try:
        devnull = None
        for i, spec in enumerate((stdin, stdout, stderr)):
            if spec is None:
                continue
            if spec == _PIPE:
                r, w = os.pipe()
                child, ours[i] = (r, w) if i == 0 else (w, r)
                child_fds.append(child)
                fds[i] = child
            elif spec == _DEVNULL:
                if devnull is None:
                    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    child_fds.append(devnull)
                fds[i] = devnull
            elif spec == _STDOUT and i == 2:
                fds[2] = fds[1] if fds[1] != -1 else sys.__stdout__.fileno()
            else:
                fds[i] = _stdio_fd(spec)
        # In the order Popen makes and checks them, after the stdio.
        env_list = _env_list(env)
        exec_list = _exec_list(executable, env)
        fds_to_keep = sorted(map(int, set(pass_fds)))
        # Raises the OSError Popen raises, naming cwd or the executable as it does.
        pid = _core._spawn(
            executable,
            exec_list,
            args,
            env_list,
            cwd,
            fds,
            fds_to_keep,
            bool(close_fds),
            bool(start_new_session),
            -1 if process_group is None else process_group,
            bool(restore_signals),
            _error_names(
                executable,
                cwd,
                _popen_posix_spawns(
                    executable, close_fds, pass_fds, cwd, fds, start_new_session, process_group
                ),
            ),
        )
    except BaseException:
        for fd in ours:
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    files = [
        None if fd is None else open(fd, "wb" if i == 0 else "rb", buffering=0)  # noqa: SIM115
        for i, fd in enumerate(ours)
    ]
    return Child(args, pid, *files)


def _exit_code(pid, proc) -> int:
    """Reap the exited child; its returncode as asyncio reports it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Someone else reaped it (Popen.poll() on the fallback path does).
        if proc is not None and proc.returncode is not None:
            return proc.returncode
        log.logger.warning("Unknown child process pid %d, will report returncode 255", pid)
        return 255
    return os.waitstatus_to_exitcode(status)


# Children a closed loop left running: reaped without blocking at the next
# spawn or loop close, as subprocess.Popen does with its own (_cleanup).
_orphans: list[int] = []


def _reap_orphans(_orphans=_orphans, _waitpid=os.waitpid, _WNOHANG=os.WNOHANG):
    # Globals bound as defaults: see _orphan_subprocesses.
    for pid in list(_orphans):
        try:
            done, _ = _waitpid(pid, _WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _orphans.remove(pid)


# asyncio's child watchers that wait for the pids given to them only: with
# one of these installed, the pidfd watch below is safe and is used.
_PER_PID_WATCHERS = tuple(
    getattr(unix_events, name)
    for name in (
        "ThreadedChildWatcher",
        "PidfdChildWatcher",
        "SafeChildWatcher",
        "MultiLoopChildWatcher",
    )
    if hasattr(unix_events, name)
)


_HAS_CHILD_WATCHERS = hasattr(unix_events, "AbstractChildWatcher")
# unix_events._make_subprocess_transport: 3.11 uses what the watcher's
# __enter__ returns, 3.12 and 3.13 the watcher itself.
_WATCHER_IS_WHAT_ENTER_RETURNS = sys.version_info < (3, 12)


def _reaping_child_watcher():
    """The child watcher installed in the policy, if it may reap any child.

    A program may install one (asyncio.set_child_watcher, Python < 3.14);
    FastChildWatcher, say, reaps every child on SIGCHLD. Exits then have to
    come through it, as on asyncio's loop.
    """
    if not _HAS_CHILD_WATCHERS:
        return None  # 3.14 removed them (and deprecated get_event_loop_policy)
    watcher = getattr(events.get_event_loop_policy(), "_watcher", None)
    if watcher is None or isinstance(watcher, _PER_PID_WATCHERS):
        return None
    return watcher


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport on the native spawn and exit watch."""

    _pidfd = -1

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, _child_watcher=None, **kwargs):
        _reap_orphans()
        options = _native_options(kwargs)
        if (
            options is None
            or subprocess.Popen is not _POPEN
            or _searches_another_path(args, shell, options)
        ):
            # Popen also when it has been replaced: asyncio's loop would call
            # the replacement.
            self._proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                universal_newlines=False,
                bufsize=bufsize,
                **kwargs,
            )
        else:
            self._proc = spawn(args, shell, stdin, stdout, stderr, **options)
        if self._loop.is_closed():
            # asyncio's transport starts the child, then its closed loop
            # refuses the task that would connect the pipes; the transport,
            # collected, closes them and kills the child. So here, at once.
            self._abandon_child()
            raise RuntimeError("Event loop is closed")
        self._watch_exit(_child_watcher)

    def _abandon_child(self):
        proc = self._proc
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            proc.kill()
        except OSError:
            pass
        if isinstance(proc, Child):
            _orphans.append(proc.pid)  # reaped at the next spawn or loop close
        self._proc = None

    def _watch_exit(self, watcher):
        loop = self._loop
        pid = self._proc.pid
        loop._subprocesses[pid] = self
        if watcher is not None:
            watcher.add_child_handler(pid, self._exited_in_watcher)
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Linux < 5.3 or not Linux
            threading.Thread(
                target=self._wait_in_thread, args=(loop, pid), name=f"waitpid-{pid}", daemon=True
            ).start()
        else:
            loop._add_reader(self._pidfd, self._on_exit)

    def _on_exit(self):
        """The pidfd is readable: the child has exited."""
        self._stop_watching()
        self._exited(_exit_code(self._proc.pid, self._proc))

    def _wait_in_thread(self, loop, pid):
        self._exited_in_watcher(pid, _exit_code(pid, self._proc), loop=loop)

    def _exited_in_watcher(self, pid, returncode, loop=None):
        """From a child watcher (any thread): hand the exit to the loop."""
        loop = loop or self._loop
        try:
            loop.call_soon_threadsafe(self._exited, returncode)
        except RuntimeError:  # the loop has closed meanwhile
            pass

    def _exited(self, code):
        if self._loop is None or self._returncode is not None:
            return
        self._loop._subprocesses.pop(self._pid, None)
        self._process_exited(code)

    def _stop_watching(self):
        pidfd, self._pidfd = self._pidfd, -1
        if pidfd >= 0:
            self._loop._remove_reader(pidfd)
            os.close(pidfd)

    def _orphan(self):
        """The loop is closing with the child still running."""
        if self._pidfd < 0:
            return  # a thread or a child watcher reaps it
        self._stop_watching()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            _orphans.append(proc.pid)


class SubprocessMethods:
    """subprocess_exec / subprocess_shell: asyncio's, making our transport."""

    subprocess_exec = base_events.BaseEventLoop.subprocess_exec
    subprocess_shell = base_events.BaseEventLoop.subprocess_shell
    _log_subprocess = base_events.BaseEventLoop._log_subprocess

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        watcher = _reaping_child_watcher()
        if watcher is None:
            return await self._start_subprocess(
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
            )
        # As asyncio's loop: the child starts inside the watcher's `with`.
        with watcher as entered:
            if not _WATCHER_IS_WHAT_ENTER_RETURNS:
                entered = watcher
            if not entered.is_active():
                raise RuntimeError(
                    "asyncio.get_child_watcher() is not activated, "
                    "subprocess support is not installed."
                )
            kwargs["_child_watcher"] = entered
            return await self._start_subprocess(
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
            )

    async def _start_subprocess(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, kwargs
    ):
        waiter = self.create_future()
        transport = SubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    # _reap is bound here: a loop that its __del__ closes at interpreter exit may
    # find this module's globals cleared already.
    def _orphan_subprocesses(self, _reap=_reap_orphans):
        while self._subprocesses:
            _, transport = self._subprocesses.popitem()
            transport._orphan()
        _reap()
