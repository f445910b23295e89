"""redis-py's asyncio client against a real Redis server (tests/services.py), on both loops.

The server listens on a Unix socket in a temp dir and lives for the session; each test
uses keys and channels under a prefix of its own (``service_name``: the test's name and
the loop's), so the runs on the two loops never touch each other's data. Every test
compares with values computed here, so both loops must give the same results.
"""

import asyncio
import contextlib

import pytest

# Installed by requirements-test.txt: a missing one is an error, not a skip.
import redis.asyncio as aioredis
from redis.exceptions import WatchError

from .netutil import assert_running_on, run

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def client(server, **kwargs):
    r = aioredis.Redis(unix_socket_path=server.socket_path, **kwargs)
    try:
        yield r
    finally:
        await r.aclose()


def test_pipeline_transaction(loop, loop_name, redis_server, service_name):
    p = service_name + ":"

    async def main():
        assert_running_on(loop_name)
        async with client(redis_server) as r, client(redis_server) as other:
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(p + "str", "value")
                pipe.incrby(p + "n", 5)
                pipe.incrby(p + "n", 7)
                pipe.rpush(p + "list", "a", "b", "c")
                pipe.lrange(p + "list", 0, -1)
                pipe.hset(p + "hash", mapping={"x": "1", "y": "2"})
                pipe.hgetall(p + "hash")
                pipe.get(p + "str")
                pipe.delete(p + "str")
                pipe.exists(p + "str")
                multi = await pipe.execute()

            # Without MULTI/EXEC: 200 commands in one round trip, replies in order.
            async with r.pipeline(transaction=False) as pipe:
                for i in range(100):
                    pipe.set(f"{p}k{i}", i)
                    pipe.get(f"{p}k{i}")
                plain = await pipe.execute()

            # WATCH: a change by another client between WATCH and EXEC aborts the
            # transaction; the retry that sees no change commits.
            async with r.pipeline(transaction=True) as pipe:
                await pipe.watch(p + "n")
                current = int(await pipe.get(p + "n"))
                await other.incr(p + "n")  # another client changes the watched key
                pipe.multi()
                pipe.set(p + "n", current * 10)
                try:
                    await pipe.execute()
                    aborted = False
                except WatchError:
                    aborted = True
                await pipe.reset()
                await pipe.watch(p + "n")
                current = int(await pipe.get(p + "n"))
                pipe.multi()
                pipe.set(p + "n", current * 10)
                committed = await pipe.execute()
            final = await r.get(p + "n")
        return multi, plain, aborted, committed, final

    multi, plain, aborted, committed, final = run(loop, main())
    assert multi == [
        True,
        5,
        12,
        3,
        [b"a", b"b", b"c"],
        2,
        {b"x": b"1", b"y": b"2"},
        b"value",
        1,
        0,
    ]
    assert plain == [x for i in range(100) for x in (True, str(i).encode())]
    assert (aborted, committed, final) == (True, [True], b"130")


def test_pubsub(loop, loop_name, redis_server, service_name):
    chan_a, chan_b = service_name + ":a", service_name + ":b"
    sent = [(chan_a if i % 3 else chan_b, f"msg {i}") for i in range(40)]

    async def main():
        assert_running_on(loop_name)
        async with client(redis_server) as sub_client, client(redis_server) as pub:
            pubsub = sub_client.pubsub()
            try:
                await pubsub.subscribe(chan_a)
                await pubsub.psubscribe(service_name + ":b*")
                confirmations = []
                while len(confirmations) < 2:
                    msg = await pubsub.get_message(timeout=5)
                    if msg is not None:
                        confirmations.append((msg["type"], msg["channel"]))
                receivers = [await pub.publish(chan, data) for chan, data in sent]
                got = []
                while len(got) < len(sent):
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if msg is not None:
                        got.append((msg["type"], msg["channel"].decode(), msg["data"].decode()))
                await pubsub.unsubscribe(chan_a)
                await pubsub.punsubscribe()
                # Nobody listens any more: a publish reaches no one.
                after = await pub.publish(chan_a, "late")
            finally:
                await pubsub.aclose()
        return confirmations, receivers, got, after

    confirmations, receivers, got, after = run(loop, main(), timeout=30)
    assert confirmations == [
        ("subscribe", chan_a.encode()),
        ("psubscribe", (service_name + ":b*").encode()),
    ]
    assert receivers == [1] * len(sent)
    assert got == [("message" if c == chan_a else "pmessage", c, d) for c, d in sent]
    assert after == 0


def test_blocking_pop_cancelled_by_wait_for(loop, loop_name, redis_server, service_name):
    key = service_name + ":queue"

    async def main():
        assert_running_on(loop_name)
        async with client(redis_server) as r, client(redis_server) as admin:
            try:
                await asyncio.wait_for(r.blpop([key], timeout=30), 0.2)
            except TimeoutError:
                outcome = "TimeoutError"
            else:
                outcome = "popped"
            # redis-py drops the connection of a cancelled command: once the server
            # saw it go, no client is blocked on the list (a value pushed before that
            # would be handed to the dead connection and lost).
            for _ in range(500):
                info = await admin.info("clients")
                if info["blocked_clients"] == 0:
                    break
                await asyncio.sleep(0.01)
            blocked = info["blocked_clients"]
            # The client takes the next commands on a new connection.
            pushed = await r.rpush(key, "first", "second")
            popped = await r.blpop([key], timeout=5)
            left = await r.lrange(key, 0, -1)
        return outcome, blocked, pushed, popped, left

    assert run(loop, main(), timeout=30) == (
        "TimeoutError",
        0,
        2,
        (key.encode(), b"first"),
        [b"second"],
    )


def test_thousand_concurrent_commands(loop, loop_name, redis_server, service_name):
    p = service_name + ":"
    n = 1000

    async def main():
        assert_running_on(loop_name)
        # At most 16 connections: the 1000 commands in flight queue for them.
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.UnixDomainSocketConnection,
            path=redis_server.socket_path,
            max_connections=16,
            timeout=20,
        )
        try:
            async with client(redis_server, connection_pool=pool) as r:
                sets = await asyncio.gather(*(r.set(f"{p}{i}", f"value {i}") for i in range(n)))
                gets = await asyncio.gather(*(r.get(f"{p}{i}") for i in range(n)))
                incrs = await asyncio.gather(*(r.incr(p + "counter") for _ in range(n)))
                counter = await r.get(p + "counter")
                mget = await r.mget([f"{p}{i}" for i in range(n)])
        finally:
            await pool.aclose()
        return sets, gets, sorted(incrs), counter, mget

    sets, gets, incrs, counter, mget = run(loop, main(), timeout=40)
    values = [f"value {i}".encode() for i in range(n)]
    assert sets == [True] * n
    assert gets == values
    assert incrs == list(range(1, n + 1))
    assert counter == str(n).encode()
    assert mget == values
