"""The throwaway PostgreSQL server the tests use is real: password authentication, fresh
databases."""

from __future__ import annotations

import psycopg
import pytest

from tests.pg_server import PostgresServer


def test_a_fresh_database_is_empty_and_writable(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_the_server_checks_passwords(postgres_server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_server.url("postgres", password="wrong"), connect_timeout=10)


def test_each_database_is_separate(postgres_server: PostgresServer) -> None:
    a, b = postgres_server.create_database(), postgres_server.create_database()
    assert a != b
    with psycopg.connect(postgres_server.url(a), autocommit=True) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
    with psycopg.connect(postgres_server.url(b), autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('only_in_a')").fetchone()
        assert found == (None,)
