"""Real services for the integration tests: a PostgreSQL server and a Redis server.

Each runs in a temporary directory of its own and listens only on a Unix socket
there (no TCP port, so parallel runs and a system-wide server never collide). The
fixtures in conftest.py start each one once per pytest session, on first use, and
stop it at the end of the session (also when tests failed); the directory is
removed then.

The servers come from Debian's packages, which the Makefile's ``sysdeps`` rule
installs (``postgresql``, ``redis-server``): a missing one is an error that says
so, not a skip. Debian keeps PostgreSQL's server programs off PATH, in
``/usr/lib/postgresql/<major>/bin``; the newest major version there is used.

PostgreSQL refuses to run as root: under root the server runs as the ``postgres``
system user the package creates, and its directory is handed to that user.

The servers stay in pytest's process group, so that a signal sent to the group (Ctrl-C,
or `make test` stopping a phase that outlived its limit) stops them too.

The servers get an environment without the sanitizer variables of ``make
sanitize`` (LD_PRELOAD of libasan and the ASan/LSan options): they are not
Python, and their leaks are not ours.
"""

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

START_TIMEOUT = 30.0  # seconds a server gets to accept connections
STOP_TIMEOUT = 10.0  # seconds a server gets to exit before it is killed

PG_PORT = 5432  # names the socket file (.s.PGSQL.5432); no TCP port is opened
PG_USER = "postgres"  # the database superuser initdb makes (trust authentication)


class ServiceError(RuntimeError):
    """A service could not be found or started."""


def _server_env():
    """This process's environment without the sanitizer's preload and options."""
    return {
        k: v
        for k, v in os.environ.items()
        if k != "LD_PRELOAD" and not re.match(r"(A|L|UB|M|T)SAN_OPTIONS$", k)
    }


def _log_tail(path, n=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError as exc:
        return f"(no log: {exc})"


def _stop(proc, sig):
    """Send ``sig`` to a server process, wait for it to exit, kill it if it does not."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def _wait_until(ready, proc, what, log):
    """Poll ``ready()`` until it holds; ServiceError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with status {proc.returncode}:\n{_log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not start in {START_TIMEOUT} s:\n{_log_tail(log)}")
        time.sleep(0.02)


# -- PostgreSQL ---------------------------------------------------------------------------


def postgres_bindir():
    """The directory of Debian's PostgreSQL server programs (the newest major version)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/postgres")
    if not found:
        raise ServiceError(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): "
            "it comes from Debian's package 'postgresql', which `make sysdeps` installs"
        )

    def major(path):
        m = re.match(r"/usr/lib/postgresql/(\d+)", path)
        return int(m.group(1)) if m else -1

    return os.path.dirname(max(found, key=major))


@dataclass
class Postgres:
    """A running PostgreSQL server: connect with host=socket_dir, user=user."""

    socket_dir: str
    user: str
    port: int


def _postgres_account():
    """The user the server runs as: ``postgres`` under root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "running as root, and PostgreSQL refuses to: it needs the 'postgres' system "
            "user, which Debian's package 'postgresql' creates (`make sysdeps`)"
        ) from None


def start_postgres():
    """Start a throw-away PostgreSQL server; returns (Postgres, stop) with stop() idempotent."""
    bindir = postgres_bindir()
    account = _postgres_account()
    run_as = {}
    if account is not None:
        # setgroups([]) drops root's supplementary groups as well.
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    # Under root the server's user must reach its directory: /tmp lets every user
    # through, where $TMPDIR (or pytest's own temp dirs) may be root's alone.
    base = tempfile.mkdtemp(prefix="fastloop-pg-", dir="/tmp" if account else None)
    proc = None

    def stop():
        nonlocal proc
        if proc is not None:
            # SIGQUIT is PostgreSQL's immediate shutdown: nothing here needs to persist.
            _stop(proc, signal.SIGQUIT)
            proc = None
        shutil.rmtree(base, ignore_errors=True)

    try:
        if account is not None:
            os.chown(base, account.pw_uid, account.pw_gid)
        os.chmod(base, 0o700)
        data = os.path.join(base, "data")
        log = os.path.join(base, "server.log")
        env = _server_env()
        init = subprocess.run(
            [
                os.path.join(bindir, "initdb"),
                "-D",
                data,
                "-U",
                PG_USER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=base,
            **run_as,
        )
        if init.returncode != 0:
            raise ServiceError(f"initdb failed ({init.returncode}):\n{init.stderr[-3000:]}")
        with open(log, "wb") as logf:
            if account is not None:
                os.fchown(logf.fileno(), account.pw_uid, account.pw_gid)
            proc = subprocess.Popen(
                [
                    os.path.join(bindir, "postgres"),
                    "-D",
                    data,
                    "-p",
                    str(PG_PORT),
                    "-c",
                    "listen_addresses=",
                    "-c",
                    f"unix_socket_directories={base}",
                    # Nothing here has to survive a crash: skip the disk flushes.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=base,
                **run_as,
            )
        pidfile = os.path.join(data, "postmaster.pid")

        def ready():
            # postmaster.pid's 8th line is the server's status: "ready" once it
            # accepts connections (PostgreSQL 10 and later).
            try:
                with open(pidfile) as f:
                    lines = f.read().splitlines()
            except OSError:
                return False
            return len(lines) >= 8 and lines[7].strip() == "ready"

        _wait_until(ready, proc, "postgres", log)
    except BaseException:
        stop()
        raise
    return Postgres(socket_dir=base, user=PG_USER, port=PG_PORT), stop


# -- Redis ---------------------------------------------------------------------------------


@dataclass
class Redis:
    """A running Redis server: connect with unix_socket_path=socket_path."""

    socket_path: str


def _redis_pong(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def start_redis():
    """Start a throw-away Redis server; returns (Redis, stop) with stop() idempotent."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceError(
            "redis-server is not installed: it comes from Debian's package 'redis-server', "
            "which `make sysdeps` installs"
        )
    base = tempfile.mkdtemp(prefix="fastloop-redis-")
    sock = os.path.join(base, "redis.sock")
    log = os.path.join(base, "server.log")
    proc = None

    def stop():
        nonlocal proc
        if proc is not None:
            _stop(proc, signal.SIGTERM)
            proc = None
        shutil.rmtree(base, ignore_errors=True)

    try:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--unixsocket",
                sock,
                "--unixsocketperm",
                "700",
                "--dir",
                base,
                "--logfile",
                log,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_server_env(),
            cwd=base,
        )
        _wait_until(lambda: os.path.exists(sock) and _redis_pong(sock), proc, "redis-server", log)
    except BaseException:
        stop()
        raise
    return Redis(socket_path=sock), stop
