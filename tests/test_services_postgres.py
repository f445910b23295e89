"""asyncpg against a real PostgreSQL server (tests/services.py), on both loops.

The server listens on a Unix socket in a temp dir and lives for the session; each test
works in a schema of its own (``service_name``: the test's name and the loop's), so the
runs on the two loops never see each other's tables or notification channels. Every
test compares with values computed here, so both loops must give the same results.
"""

import asyncio
import contextlib
import hashlib

# Installed by requirements-test.txt: a missing one is an error, not a skip.
import asyncpg
import pytest

from .netutil import assert_running_on, run

pytestmark = pytest.mark.timeout(60)


def connect_args(pg, schema):
    """asyncpg.connect / create_pool arguments for ``schema`` on the server ``pg``."""
    return {
        "host": pg.socket_dir,
        "port": pg.port,
        "user": pg.user,
        "database": "postgres",
        "server_settings": {"search_path": schema},
    }


@contextlib.asynccontextmanager
async def connection(pg, schema):
    conn = await asyncpg.connect(**connect_args(pg, schema))
    try:
        yield conn
    finally:
        await conn.close()


async def new_schema(pg, schema):
    async with connection(pg, "public") as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")


def test_pool_concurrent_queries(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        async with asyncpg.create_pool(min_size=2, max_size=5, **connect_args(pg, schema)) as pool:
            await pool.execute("CREATE TABLE items (id int PRIMARY KEY, square bigint)")

            async def one(i):
                # The sleep keeps several queries in flight at once, on several connections.
                value = await pool.fetchval("SELECT $1::bigint * $1, pg_sleep(0.005)", i)
                value = await pool.fetchval(
                    "INSERT INTO items VALUES ($1, $2) RETURNING square", i, value
                )
                async with pool.acquire() as conn:
                    row = await conn.fetchrow("SELECT id, square FROM items WHERE id = $1", i)
                return value, tuple(row)

            results = await asyncio.gather(*(one(i) for i in range(60)))
            total = await pool.fetchrow("SELECT count(*), sum(square) FROM items")
            size = pool.get_size()
        return results, tuple(total), size

    results, total, size = run(loop, main(), timeout=30)
    assert results == [(i * i, (i, i * i)) for i in range(60)]
    assert total == (60, sum(i * i for i in range(60)))
    assert 2 <= size <= 5


def test_copy_records_to_table(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name
    n = 10_000
    records = [(i, f"name {i}", i / 4, bytes([i % 256]) * (i % 7)) for i in range(n)]

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        async with connection(pg, schema) as conn:
            await conn.execute("CREATE TABLE rows (id int, name text, quarter float8, blob bytea)")
            status = await conn.copy_records_to_table(
                "rows", records=records, columns=["id", "name", "quarter", "blob"]
            )
            check = await conn.fetchrow(
                "SELECT count(*), sum(id), sum(quarter),"
                " md5(string_agg(name || ':' || encode(blob, 'hex'), ',' ORDER BY id))"
                " FROM rows"
            )
            some = await conn.fetch("SELECT * FROM rows WHERE id IN (0, 4999, 9999) ORDER BY id")
        return status, tuple(check), [tuple(r) for r in some]

    status, check, some = run(loop, main(), timeout=30)
    joined = ",".join(f"{name}:{blob.hex()}" for _, name, _, blob in records)
    assert status == f"COPY {n}"
    assert check == (
        n,
        sum(range(n)),
        sum(r[2] for r in records),
        hashlib.md5(joined.encode()).hexdigest(),
    )
    assert some == [records[0], records[4999], records[9999]]


class Boom(Exception):
    pass


def test_transaction_rollback(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        async with connection(pg, schema) as conn:
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1, 'committed')")
            raised = None
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (2, 'rolled back')")
                    await conn.execute("UPDATE t SET note = 'changed' WHERE id = 1")
                    inside = await conn.fetchval("SELECT count(*) FROM t")
                    raise Boom("undo")
            except Boom as exc:
                raised = str(exc)
            in_tx = conn.is_in_transaction()
            # A failing statement rolls back its (nested) transaction: a savepoint.
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (3, 'kept')")
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO t VALUES (3, 'duplicate')")
                except asyncpg.UniqueViolationError as exc:
                    duplicate = exc.sqlstate
            rows = [tuple(r) for r in await conn.fetch("SELECT id, note FROM t ORDER BY id")]
        return inside, raised, in_tx, duplicate, rows

    assert run(loop, main()) == (
        2,
        "undo",
        False,
        "23505",
        [(1, "committed"), (3, "kept")],
    )


def test_cursor(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name
    n = 5000

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        async with connection(pg, schema) as conn:
            query = "SELECT g, g * 3 AS triple FROM generate_series(1, $1::int) g ORDER BY g"
            async with conn.transaction():
                # Iteration fetches `prefetch` rows per round trip from the server's cursor.
                seen = [(r["g"], r["triple"]) async for r in conn.cursor(query, n, prefetch=97)]
                cur = await conn.cursor(query, n)
                first = [tuple(r) for r in await cur.fetch(3)]
                skipped = await cur.forward(1000)
                row = tuple(await cur.fetchrow())
                rest = await cur.fetch(n)
        return seen, first, skipped, row, len(rest), tuple(rest[-1])

    seen, first, skipped, row, n_rest, last = run(loop, main(), timeout=30)
    assert seen == [(g, 3 * g) for g in range(1, n + 1)]
    assert first == [(1, 3), (2, 6), (3, 9)]
    assert skipped == 1000
    assert row == (1004, 3012)
    assert (n_rest, last) == (n - 1004, (n, 3 * n))


def test_listen_notify(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name
    channel = service_name
    payloads = [f"message {i}" for i in range(30)]

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        received = []
        all_in = asyncio.get_running_loop().create_future()

        def on_notify(conn, pid, chan, payload):
            received.append((pid, chan, payload, asyncio.get_running_loop()))
            if len(received) == len(payloads) and not all_in.done():
                all_in.set_result(None)

        async with connection(pg, schema) as listener, connection(pg, schema) as sender:
            await listener.add_listener(channel, on_notify)
            for p in payloads[:20]:
                await sender.execute("SELECT pg_notify($1, $2)", channel, p)
            # Notifications sent in a transaction are delivered at commit, in order.
            async with sender.transaction():
                for p in payloads[20:]:
                    await sender.execute("SELECT pg_notify($1, $2)", channel, p)
            await asyncio.wait_for(all_in, 10)
            await listener.remove_listener(channel, on_notify)
            sender_pid = sender.get_server_pid()
        running = asyncio.get_running_loop()
        return [
            (pid == sender_pid, chan, payload, lp is running) for pid, chan, payload, lp in received
        ]

    assert run(loop, main(), timeout=30) == [(True, channel, p, True) for p in payloads]


def test_slow_query_cancelled_by_wait_for(loop, loop_name, postgres_server, service_name):
    pg, schema = postgres_server, service_name

    async def main():
        assert_running_on(loop_name)
        await new_schema(pg, schema)
        async with connection(pg, schema) as conn, connection(pg, schema) as watcher:
            pid = conn.get_server_pid()
            try:
                await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(10)"), 0.2)
            except TimeoutError:
                outcome = "TimeoutError"
            else:
                outcome = "finished"
            # asyncpg cancelled the query on the server (a cancel request on a
            # connection of its own); the connection takes the next query.
            after = await conn.fetchval("SELECT 40 + 2")
            state = await watcher.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
            in_tx = conn.is_in_transaction()
        return outcome, after, state, in_tx

    assert run(loop, main(), timeout=30) == ("TimeoutError", 42, "idle", False)
