"""The loop's low-level socket API: sock_recv & co., sock_accept, sock_connect, sock_sendfile.

Each operation tries its system call at once and returns without a future
when it succeeds, which in a busy server is the common case. Otherwise it
waits with add_reader / add_writer, retries the call in the watcher's
callback (as asyncio's selector loop does) and removes the watcher when the
waiting coroutine resumes, whether it completed or was cancelled.

Watchers are replaced, not stacked: a second operation waiting on the same
fd in the same direction takes the watcher over, and the first then waits
until it is cancelled, exactly as asyncio 3.11 behaves. The loop remembers
which future owns each fd's watcher, so a cancelled operation never removes
the watcher a later one installed (asyncio checks its handle's cancelled
flag for the same purpose). Names and messages mirror
``asyncio.selector_events``, ``base_events`` and ``unix_events``.
"""

from __future__ import annotations

import errno
import io
import os
import socket
from asyncio import constants, exceptions

from ._core import sock_recv_now as _recv_now
from ._dns import _HAS_IPv6

try:
    import ssl

    _SSLSocket = ssl.SSLSocket
except ImportError:  # pragma: no cover - Python built without ssl

    class _SSLSocket:  # a class no socket is an instance of
        pass


_NON_BLOCKING = "the socket must be non-blocking"
_RETRY = (BlockingIOError, InterruptedError)


def _check_ssl_socket(sock):
    if isinstance(sock, _SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


# ---- watcher callbacks: retry the call once the fd is ready --------------------
#
# Each returns early when its future is already done (cancelled during the
# iteration the fd became ready), and on EAGAIN/EINTR leaves the watcher in
# place for the next readiness.


def _sendall_ready(fut, sock, view, pos):
    # pos is a one-item list: how much of view was sent so far.
    if fut.done():
        return
    start = pos[0]
    try:
        n = sock.send(view[start:])
    except _RETRY:
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        return
    start += n
    if start == len(view):
        fut.set_result(None)
    else:
        pos[0] = start


def _connect_ready(fut, sock, address):
    if fut.done():
        return
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, f"Connect call failed {address}")
    except _RETRY:
        pass  # still connecting: the watcher stays
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result(None)
    finally:
        fut = None  # the exception's traceback must not hold the future


def _accept_ready(fut, sock):
    if fut.done():
        return
    try:
        conn, address = sock.accept()
        conn.setblocking(False)
    except _RETRY:
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        fut.set_result((conn, address))


def _writable(fut):
    if not fut.done():
        fut.set_result(None)


class SocketMethods:
    """loop.sock_* of asyncio's loop, mixed into fastloop.Loop.

    sock_connect resolves through the loop's DnsMethods (_ensure_resolved).
    """

    __slots__ = ()

    # ---- who owns an fd's watcher ---------------------------------------------

    def _sock_read_owners(self):
        """{fd: future} of the sock_* operations waiting to read."""
        try:
            return self._sock_readers
        except AttributeError:
            self._sock_readers = owners = {}
            return owners

    def _sock_write_owners(self):
        """{fd: future} of the sock_* operations waiting to write."""
        try:
            return self._sock_writers
        except AttributeError:
            self._sock_writers = owners = {}
            return owners

    def _check_sock(self, sock):
        if isinstance(sock, _SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_NON_BLOCKING)

    # Every operation tries its syscall first and waits only when it would
    # block. Waiting: register the watcher, then record the future as its owner
    # (only once add_* succeeded: it raises on a closed loop), await, and on
    # the way out remove the watcher only if no later operation took it over.

    async def _wait(self, fd, write, ready, *args):
        """Await `ready(fut, *args)`, run whenever fd is writable (write) or
        readable, resolving fut."""
        fut = self.create_future()
        if write:
            self.add_writer(fd, ready, fut, *args)
            owners, remove = self._sock_write_owners(), self.remove_writer
        else:
            self.add_reader(fd, ready, fut, *args)
            owners, remove = self._sock_read_owners(), self.remove_reader
        owners[fd] = fut
        try:
            return await fut
        finally:
            if owners.get(fd) is fut:
                del owners[fd]
                remove(fd)
            fut = None  # break the future <-> traceback cycle of a failure

    async def _retry(self, sock, write, method, *args):
        """Await sock.<method>(*args) once sock is writable (write) or readable:
        retried natively until it does not block (cpp/sockwait.hpp). The method
        is looked up on each retry, as asyncio does."""
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        fut = self._sock_wait(fd, write, sock, method, *args)
        try:
            return await fut
        except BaseException:
            self._sock_unwait(fd, write, fut)  # cancelled: give the fd up
            raise
        finally:
            fut = None  # break the future <-> traceback cycle of a failure

    # ---- receiving -------------------------------------------------------------

    async def sock_recv(self, sock, n):
        """Receive up to n bytes from sock; b'' at end of stream."""
        self._check_sock(sock)
        # sock.recv(n), or None when it would block (made without raising
        # BlockingIOError for a socket.socket: see cpp/sockwait.hpp).
        data = _recv_now(sock, n, False)
        if data is not None:
            return data
        return await self._retry(sock, False, "recv", n)

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer buf; return the number of bytes."""
        self._check_sock(sock)
        nbytes = _recv_now(sock, buf, True)
        if nbytes is not None:
            return nbytes
        return await self._retry(sock, False, "recv_into", buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to bufsize bytes: (data, address)."""
        self._check_sock(sock)
        try:
            return sock.recvfrom(bufsize)
        except _RETRY:
            pass
        return await self._retry(sock, False, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into buf: (number of bytes, address)."""
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except _RETRY:
            pass
        return await self._retry(sock, False, "recvfrom_into", buf, nbytes)

    # ---- sending ---------------------------------------------------------------

    async def sock_sendall(self, sock, data):
        """Send all of data; on error there is no telling how much was sent."""
        self._check_sock(sock)
        try:
            n = sock.send(data)
        except _RETRY:
            n = 0
        kind = type(data)
        if kind is bytes or kind is bytearray:
            if n == len(data):
                return
            view = memoryview(data)
        else:
            # Count in bytes: len() of a buffer may count wider items.
            view = memoryview(data)
            if n == view.nbytes:
                return
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
        return await self._wait(sock.fileno(), True, _sendall_ready, sock, view, [n])

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to address; return the number of bytes sent."""
        self._check_sock(sock)
        try:
            return sock.sendto(data, address)
        except _RETRY:
            pass
        return await self._retry(sock, True, "sendto", data, 0, address)

    # ---- connecting and accepting ------------------------------------------------

    async def sock_connect(self, sock, address):
        """Connect sock to address (resolved first for IP sockets)."""
        _check_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_NON_BLOCKING)
        if sock.family == socket.AF_INET or (_HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            _, _, _, _, address = resolved[0]
        try:
            sock.connect(address)
            return
        except _RETRY:
            # EINPROGRESS, or EINTR: the connection goes on in the background
            # either way; writability tells when it is done.
            pass
        return await self._wait(sock.fileno(), True, _connect_ready, sock, address)

    async def sock_accept(self, sock):
        """Accept a connection: (conn, address), conn non-blocking."""
        _check_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_NON_BLOCKING)
        try:
            conn, address = sock.accept()
        except _RETRY:
            pass
        else:
            conn.setblocking(False)
            return conn, address
        return await self._wait(sock.fileno(), False, _accept_ready, sock)

    async def _sock_wait_writable(self, fd):
        await self._wait(fd, True, _writable)

    # ---- sendfile --------------------------------------------------------------

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send a file over a connected stream socket; return the bytes sent.

        Zero-copy with os.sendfile() when the file is a regular file; else,
        if fallback is true, by reading the file and sending what was read.
        """
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError(_NON_BLOCKING)
        _check_ssl_socket(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        try:
            sendfile = os.sendfile
        except AttributeError:
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # an empty file

        fd = sock.fileno()
        total_sent = 0
        first_call = True
        try:
            while True:
                if count:
                    blocksize = count - total_sent
                    if blocksize <= 0:
                        return total_sent
                try:
                    sent = sendfile(fd, fileno, offset, blocksize)
                except _RETRY:
                    pass
                except OSError as exc:
                    if (
                        not first_call
                        and exc.errno == errno.ENOTCONN
                        and type(exc) is not ConnectionError
                    ):
                        # The peer went away in the middle: the same error
                        # on every POSIX system.
                        new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                        new_exc.__cause__ = exc
                        exc = new_exc
                    if total_sent == 0:
                        # Most likely a file sendfile() cannot map (a pipe, a
                        # special file...): the caller may fall back to send().
                        raise exceptions.SendfileNotAvailableError("os.sendfile call failed")
                    raise exc
                else:
                    if sent == 0:
                        return total_sent  # end of file
                    offset += sent
                    total_sent += sent
                first_call = False
                # As asyncio, let the loop run between two chunks.
                await self._sock_wait_writable(fd)
        finally:
            # The file position ends after what was sent, as with the fallback.
            if total_sent > 0:
                os.lseek(fileno, offset, os.SEEK_SET)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = (
            min(count, constants.SENDFILE_FALLBACK_READBUFFER_SIZE)
            if count
            else constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        )
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # end of file
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    def _check_sendfile_params(self, sock, file, offset, count):
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not sock.type == socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
