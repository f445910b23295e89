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
import concurrent.futures
import errno
import functools
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import constants, coroutines, events, format_helpers, futures, tasks

from . import _core
from ._datagram import DatagramMethods
from ._dns import DnsMethods
from ._network import NetworkMethods
from ._pipes import PipeMethods
from ._sockets import SocketMethods
from ._subprocess import SubprocessMethods

# asyncio's own logger: logging set up for asyncio sees fastloop's reports.
logger = logging.getLogger("asyncio")

_THREAD_JOIN_TIMEOUT = getattr(constants, "THREAD_JOIN_TIMEOUT", None)


# ---- helpers the core calls (see cpp/hooks.hpp) ------------------------------


def _format_callback(callback, args) -> str:
    try:
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
        info.append(_format_callback(handle._callback, handle._args))
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _report_callback_error(handle, exc) -> None:
    context = {
        "message": f"Exception in callback {_format_callback(handle._callback, handle._args)}",
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
)


_C_INT_MAX = 2**31 - 1


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


class Loop(
    SocketMethods,
    DnsMethods,
    DatagramMethods,
    NetworkMethods,
    PipeMethods,
    SubprocessMethods,
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
      ``subprocess_shell``.
    """

    __module__ = "fastloop"

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
        self._transports = weakref.WeakValueDictionary()  # fd -> open stream transport
        self._subprocesses = {}  # pid -> SubprocessTransport whose child has not exited
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self.set_debug(coroutines._is_debug_mode())
        _LIVE_LOOPS.add(self)

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
            self._run()
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
        self._close()
        if executor is not None:
            executor.shutdown(wait=False)

    # ---- debug mode ----------------------------------------------------------

    def set_debug(self, enabled):
        self._set_debug(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(constants.DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    # ---- tasks ---------------------------------------------------------------

    def _create_task_general(self, coro, *, name=None, context=None, **kwargs):
        """create_task() when the native fast path does not apply."""
        self._check_closed()
        factory = self._task_factory
        if factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
        else:
            if context is not None:
                kwargs["context"] = context
            task = factory(self, coro, **kwargs)
            if name is not None:
                task.set_name(name)
        return task

    def set_task_factory(self, factory):
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self):
        return self._task_factory

    # ---- exception handling --------------------------------------------------

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info = (type(exception), exception, exception.__traceback__) if exception else False
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            value = context[key]
            if key == "source_traceback":
                stack = "".join(traceback.format_list(value)).rstrip()
                value = f"Object created at (most recent call last):\n{stack}"
            elif key == "handle_traceback":
                stack = "".join(traceback.format_list(value)).rstrip()
                value = f"Handle created at (most recent call last):\n{stack}"
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # ---- executors -----------------------------------------------------------

    def run_in_executor(self, executor, func, *args):
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor):
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=_THREAD_JOIN_TIMEOUT):
        """Join the default executor's threads; wait at most `timeout` seconds."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._join_executor, args=(executor, done))
        thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _join_executor(self, executor, done):
        try:
            executor.shutdown(wait=True)
            result = (done.set_result, None)
        except Exception as exc:
            result = (done.set_exception, exc)
        if not self.is_closed():
            self.call_soon_threadsafe(_resolve_unless_done, done, *result)

    def _check_callback(self, callback, method):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    # ---- async generators ----------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self):
        self._asyncgens_shutdown_called = True
        if not self._asyncgens:
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

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
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
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


def _resolve_unless_done(fut, setter, value):
    if not fut.done():
        setter(value)
