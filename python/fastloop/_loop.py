"""fastloop.Loop: the event loop users get.

The native core (``_core.Loop``) owns the iteration, the ready queue, the
timers, fd watching and the hot entry points (``call_soon`` & co.). This
module adds what asyncio's loop does around them in Python: running and
closing, exception handlers, executors, async generators, signal handlers
and task factories. Names and messages mirror ``asyncio.base_events`` and
``asyncio.unix_events`` so the two can be read side by side.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import functools
import inspect
import logging
import os
import signal
import sys
import threading
import warnings
import weakref
from asyncio import base_events, coroutines, events, format_helpers, futures, tasks

from . import _core
from ._datagram import DatagramMethods
from ._dns import DnsMethods
from ._health import HealthMethods, _report_slow_callback, _report_stall, _stop_all_monitors
from ._network import NetworkMethods
from ._pipes import PipeMethods
from ._sockets import SocketMethods
from ._subprocess import SubprocessMethods

# asyncio's own logger: logging set up for asyncio sees fastloop's reports.
logger = logging.getLogger("asyncio")

_Base = base_events.BaseEventLoop


# ---- helpers the core calls (see cpp/hooks.hpp) ------------------------------


# Since 3.13 a callback's arguments are shown only in debug mode (they may hold
# secrets): asyncio passes its loop's debug flag; before, there was no such flag.
_FORMAT_TAKES_DEBUG = (
    "debug" in inspect.signature(format_helpers._format_callback_source).parameters
)

# 3.14 deprecates asyncio.iscoroutinefunction; asyncio's own code uses the
# private twin it keeps.
_iscoroutinefunction = getattr(coroutines, "_iscoroutinefunction", coroutines.iscoroutinefunction)


def _format_callback(callback, args, loop) -> str:
    try:
        if _FORMAT_TAKES_DEBUG:
            return format_helpers._format_callback_source(callback, args, debug=loop.get_debug())
        return format_helpers._format_callback_source(callback, args)
    except Exception:  # a private helper of asyncio: never let it break a report
        return repr(callback)


def _handle_repr(handle) -> str:
    info = [type(handle).__name__]
    if handle.cancelled():
        info.append("cancelled")
    if isinstance(handle, _core.TimerHandle):
        info.insert(2 if handle.cancelled() else 1, f"when={handle.when()}")
    if handle._callback is not None:
        info.append(_format_callback(handle._callback, handle._args, handle._loop))
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _report_callback_error(handle, exc) -> None:
    callback = _format_callback(handle._callback, handle._args, handle._loop)
    context = {
        "message": f"Exception in callback {callback}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    handle._loop.call_exception_handler(context)


def _format_handle(handle) -> str:
    # A task's step is reported as the task, as asyncio does.
    owner = getattr(handle._callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return repr(owner)
    return repr(handle)  # in debug mode, the repr saved when it was cancelled


def _log_slow_callback(handle, seconds: float) -> None:
    logger.warning("Executing %s took %.3f seconds", _format_handle(handle), seconds)


def _extract_stack():
    # Frame 1 is the Python code that called call_soon & co.
    return format_helpers.extract_stack(sys._getframe(1))


def _is_coroutine_marked(obj) -> bool:
    return getattr(obj, "_is_coroutine", None) is getattr(coroutines, "_is_coroutine", object())


_core._install_hooks(
    report_callback_error=_report_callback_error,
    handle_repr=_handle_repr,
    log_slow_callback=_log_slow_callback,
    extract_stack=_extract_stack,
    is_coroutine_marked=_is_coroutine_marked,
    future_type=asyncio.Future,
    task_type=asyncio.Task,
    partial_type=functools.partial,
    report_slow_callback=_report_slow_callback,
    report_stall=_report_stall,
)


_C_INT_MAX = 2**31 - 1

# The native one-iteration method, to tell it from a _run_once a program
# replaced (see run_forever).
_NATIVE_RUN_ONCE = _core.Loop.__dict__["_run_once"].__func__


def _c_int(fd: int) -> int:
    """An fd as the kernel takes it: what does not fit a C int is refused as
    asyncio's selector refuses it."""
    if fd > _C_INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return fd


def _fileobj_to_fd(fileobj) -> int:
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _SignalDispatcher:
    """The Python-level handler of a signal watched with add_signal_handler.

    Python runs it in the main thread as soon as it can: between two
    bytecodes while the loop is busy, or when the signal's byte on the
    wake-up fd ends the loop's poll. It queues the loop's handler callback.
    It holds the loop weakly, so an abandoned loop is still collected.
    """

    __slots__ = ("_loop",)

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def __call__(self, signum, frame):
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            loop._handle_signal(signum)


def _run_until_complete_cb(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The exception leaves run_forever by itself; stopping now would
            # lose it.
            return
    futures._get_loop(fut).stop()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# Told of each loop made and closed: objects with loop_created(loop) and
# loop_closing(loop) (python -m fastloop --stats, in _stats.py).
_OBSERVERS: list = []


class Loop(
    SocketMethods,
    DnsMethods,
    DatagramMethods,
    NetworkMethods,
    PipeMethods,
    SubprocessMethods,
    HealthMethods,
    _core.Loop,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop running on fastloop's libuv core.

    Where each group of methods lives:

    - ``_core.Loop`` (cpp/loop.*, bound in cpp/bindings/loop.cpp): the
      iteration, ``call_soon``/``call_later``/``call_at``/
      ``call_soon_threadsafe``, ``time``, ``create_future``, ``create_task``,
      ``stop``, ``is_running``, ``is_closed`` and the fd watchers under
      ``add_reader``/``add_writer``;
    - this module (_loop.py): ``run_forever``, ``run_until_complete``,
      ``close``, debug mode, task factories, exception handlers, executors,
      async generators, ``add_reader``/``add_writer``/``remove_*``, signal
      handlers;
    - ``SocketMethods`` (_sockets.py): ``sock_recv`` & co., ``sock_sendfile``;
    - ``DnsMethods`` (_dns.py): ``getaddrinfo``, ``getnameinfo``;
    - ``DatagramMethods`` (_datagram.py): ``create_datagram_endpoint``;
    - ``NetworkMethods`` (_network.py, transports in _transports.py):
      ``create_connection``, ``create_server``, their Unix variants,
      ``connect_accepted_socket``, ``start_tls``, ``sendfile``;
    - ``PipeMethods`` (_pipes.py): ``connect_read_pipe``,
      ``connect_write_pipe``;
    - ``SubprocessMethods`` (_subprocess.py): ``subprocess_exec``,
      ``subprocess_shell``;
    - ``HealthMethods`` (_health.py, counting in cpp/health.hpp):
      ``metrics``, ``utilization``, ``monitor_lag``,
      ``set_slow_callback_handler``, ``start_watchdog``, ``stop_watchdog``.
    """

    __module__ = "fastloop"
    # A class attribute, not the module global: close() may run from __del__
    # at interpreter exit, after the module's globals are gone.
    _observers = _OBSERVERS

    def __init__(self):
        super().__init__()
        self.slow_callback_duration = 0.1
        self._exception_handler = None
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._signal_handlers = {}
        self._watched_readers = {}
        self._watched_writers = {}
        self._listeners = {}  # listening fd -> _transports.Listener
        # 3.13's create_unix_server records here the sockets whose path
        # _stop_serving unlinks (cleanup_socket=True); see _network.py.
        self._unix_server_sockets = {}
        self._transports = weakref.WeakValueDictionary()  # fd -> open stream transport
        self._subprocesses = {}  # pid -> SubprocessTransport whose child has not exited
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self.set_debug(coroutines._is_debug_mode())
        _LIVE_LOOPS.add(self)
        for observer in _OBSERVERS:
            observer.loop_created(self)

    def __repr__(self):
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn=warnings.warn):
        try:
            closed = self.is_closed()
        except TypeError:  # __init__ never ran
            return
        if not closed:
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ---- running and stopping ----------------------------------------------

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        wakeup = self._claim_signal_wakeup()
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            # A _run_once the program replaced (on the loop or in a subclass)
            # runs each iteration, as asyncio's run_forever calls it.
            step = self._run_once
            self._run(None if getattr(step, "__func__", None) is _NATIVE_RUN_ONCE else step)
        finally:
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)
            self._release_signal_wakeup(wakeup)

    def run_until_complete(self, future):
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # A task made here is ours: an exception it ends with is raised
            # below, so it must not also be logged as never retrieved.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()  # mark it retrieved: it is propagating now
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        if self._signal_handlers:
            if sys.is_finalizing():
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    stacklevel=2,
                    source=self,
                )
                self._signal_handlers.clear()
            else:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        self._watched_readers.clear()
        self._watched_writers.clear()
        self._listeners.clear()  # the core closes them with the loop
        self._orphan_subprocesses()
        for observer in self._observers:
            observer.loop_closing(self)
        self._stop_health_monitors()
        self._close()
        if executor is not None:
            executor.shutdown(wait=False)

    # ---- debug mode ----------------------------------------------------------

    def set_debug(self, enabled):
        self._set_debug(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    # ---- asyncio's own code, borrowed by reference ----------------------------
    # What asyncio's loop does here in Python needs nothing of the selector:
    # these are BaseEventLoop's methods, called on this loop, so they behave as
    # on the running Python (3.12 runs a custom exception handler in the
    # failing task's or handle's context, 3.12 added shutdown_default_executor's
    # timeout, 3.14 passes any keyword of create_task on to the task...). They
    # read only what this class provides: _exception_handler, _current_handle,
    # _default_executor, _executor_shutdown_called, _asyncgens,
    # _asyncgens_shutdown_called, _coroutine_origin_tracking_*, _task_factory
    # and _debug (native properties), _check_closed.

    _set_coroutine_origin_tracking = _Base._set_coroutine_origin_tracking

    # create_task() when the native fast path does not apply (a task factory,
    # debug mode, a keyword other than name and context).
    _create_task_general = _Base.create_task
    set_task_factory = _Base.set_task_factory
    get_task_factory = _Base.get_task_factory

    get_exception_handler = _Base.get_exception_handler
    set_exception_handler = _Base.set_exception_handler
    default_exception_handler = _Base.default_exception_handler
    call_exception_handler = _Base.call_exception_handler
    # asyncio's _run_once records the handle it runs in debug mode, for the
    # default handler's "handle_traceback"; fastloop's core does not.
    _current_handle = None

    run_in_executor = _Base.run_in_executor
    set_default_executor = _Base.set_default_executor
    shutdown_default_executor = _Base.shutdown_default_executor
    _do_shutdown = _Base._do_shutdown
    _check_default_executor = _Base._check_default_executor
    _check_callback = _Base._check_callback

    _asyncgen_finalizer_hook = _Base._asyncgen_finalizer_hook
    _asyncgen_firstiter_hook = _Base._asyncgen_firstiter_hook
    shutdown_asyncgens = _Base.shutdown_asyncgens

    # ---- watching file descriptors -------------------------------------------

    # File objects are remembered while watched: as with asyncio's selector,
    # remove_reader(sock) still works after sock.close() made fileno() -1.

    def _ensure_fd_no_transport(self, fd):
        """An fd that an open transport owns cannot be watched (asyncio's check).

        Like asyncio's, it only reads the number (a negative one is looked up, not
        refused): the checks of the fd itself come after the loop's.
        """
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def add_reader(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._check_closed()
        fileno = _fileobj_to_fd(fd)
        self._add_reader_with(_c_int(fileno), callback, args, None)
        self._watched_readers[fileno] = fd

    def remove_reader(self, fd):
        self._ensure_fd_no_transport(fd)
        if self.is_closed():
            return False
        fileno = self._watched_fd(fd, self._watched_readers)
        self._watched_readers.pop(fileno, None)
        return fileno <= _C_INT_MAX and self._remove_reader(fileno)

    def add_writer(self, fd, callback, *args):
        self._ensure_fd_no_transport(fd)
        self._check_closed()
        fileno = _fileobj_to_fd(fd)
        self._add_writer_with(_c_int(fileno), callback, args, None)
        self._watched_writers[fileno] = fd

    def remove_writer(self, fd):
        self._ensure_fd_no_transport(fd)
        if self.is_closed():
            return False
        fileno = self._watched_fd(fd, self._watched_writers)
        self._watched_writers.pop(fileno, None)
        return fileno <= _C_INT_MAX and self._remove_writer(fileno)

    # asyncio's private fd-watching methods, which its pipe and subprocess
    # transports call on their loop (unix_events._UnixReadPipeTransport...).
    def _add_reader(self, fd, callback, *args):
        self._check_closed()
        self._add_reader_with(fd, callback, args, None)

    def _add_writer(self, fd, callback, *args):
        self._check_closed()
        self._add_writer_with(fd, callback, args, None)

    @staticmethod
    def _watched_fd(fileobj, watched):
        try:
            return _fileobj_to_fd(fileobj)
        except ValueError:
            for fileno, obj in watched.items():
                if obj is fileobj:
                    return fileno
            raise

    # ---- signals ---------------------------------------------------------------

    def _claim_signal_wakeup(self):
        """Point Python's signal wake-up fd at this loop while it runs.

        A signal then ends a blocking poll at once (Ctrl-C works while the
        loop sleeps). Returns the fd it replaced, or None off the main thread.
        """
        if not _in_main_thread():
            return None
        try:
            return signal.set_wakeup_fd(self._signal_wakeup_fd, warn_on_full_buffer=False)
        except ValueError:  # e.g. a subinterpreter
            return None

    def _release_signal_wakeup(self, previous):
        if previous is None or self._signal_handlers:
            return  # added signal handlers keep the wake-up fd, as in asyncio
        ours = self._signal_wakeup_fd
        try:
            signal.set_wakeup_fd(-1 if previous == ours else previous)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd failed: %s", exc)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Raises ValueError off the main thread.
            signal.set_wakeup_fd(self._signal_wakeup_fd, warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        self._signal_handlers[sig] = _core.Handle(callback, args, self, None)
        try:
            signal.signal(sig, _SignalDispatcher(self))
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers and not self.is_running():
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        # While running, the loop keeps the wake-up fd for Ctrl-C; run_forever
        # gives it back when it returns.
        if not self._signal_handlers and not self.is_running():
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    def _handle_signal(self, sig):
        """Queue the callback added for `sig` (called by its _SignalDispatcher)."""
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle.cancelled():
            self.remove_signal_handler(sig)
        else:
            self._add_callback(handle)


# Every loop not yet garbage-collected, for the fork hook below.
_LIVE_LOOPS: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child():
    """In a forked child: no loop keeps using the parent's kernel objects.

    Each loop gets an epoll instance of its own before it next polls or
    closes (the core's after_fork), so nothing the child does with a copied
    loop, closing it included, changes the parent's. Python's signal wake-up
    fd, if it is a loop's, is reset: it is the write end of a socket pair the
    parent's loop reads. A new loop in the child starts from scratch.
    """
    wakeup_fds = set()
    for loop in list(_LIVE_LOOPS):
        loop._after_fork()
        if not loop.is_closed():
            wakeup_fds.add(loop._signal_wakeup_fd)
    try:
        current = signal.set_wakeup_fd(-1)
        if current not in wakeup_fds:
            signal.set_wakeup_fd(current)
    except (ValueError, OSError):  # not the main thread
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)
# A monitor thread (lag, slow callbacks, watchdog) must not outlive the
# interpreter: its stall reports call into Python or signal faulthandler.
atexit.register(_stop_all_monitors, _LIVE_LOOPS)
