"""The shared cache behind the replay check and the JWKS cache: in-process and Redis.

The Redis tests run against the real server at 127.0.0.1:6379 (CI has it). They are skipped
only when it is unreachable AND ``CI`` is not set; under CI an unreachable Redis fails.
"""

from __future__ import annotations

import ast
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from cds_server import config
from cds_server.sharedcache import (
    CacheUnavailable,
    MemoryCache,
    RedisCache,
    open_cache,
    redacted,
)
from tests import jwtkit as kit

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    try:
        open_cache(REDIS_URL)
    except CacheUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis must be reachable under CI: {exc}")
        pytest.skip(f"Redis not reachable here: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_cache(redis_url: str) -> Iterator[RedisCache]:
    cache = RedisCache(redis_url, prefix=f"cds-test:{uuid.uuid4().hex}:")
    try:
        yield cache
    finally:
        cache.delete_namespace()
        cache.close()


def _contract(cache: MemoryCache | RedisCache, wait: Callable[[float], None]) -> None:
    assert cache.get("a") is None
    assert cache.add("a", "1", 60) is True
    assert cache.add("a", "2", 60) is False  # already there: not replaced
    assert cache.get("a") == "1"
    cache.set("a", "3", 60)
    assert cache.get("a") == "3"
    assert cache.add("short", "x", 0.05) is True
    wait(0.1)
    assert cache.get("short") is None
    assert cache.add("short", "y", 60) is True  # expired keys can be added again


def test_memory_cache_contract() -> None:
    now = [1000.0]
    cache = MemoryCache(clock=lambda: now[0])
    _contract(cache, lambda s: now.__setitem__(0, now[0] + s))


def test_memory_cache_fails_closed_when_full() -> None:
    now = [0.0]
    cache = MemoryCache(max_entries=2, clock=lambda: now[0])
    assert cache.add("a", "1", 10) and cache.add("b", "1", 10)
    with pytest.raises(CacheUnavailable):
        cache.add("c", "1", 10)
    now[0] = 11.0  # both expired: purged to make room
    assert cache.add("c", "1", 10)


def test_redis_cache_contract(redis_cache: RedisCache) -> None:
    _contract(redis_cache, time.sleep)


def test_redis_namespaces_are_separate(redis_url: str, redis_cache: RedisCache) -> None:
    other = RedisCache(redis_url, prefix=f"cds-test:{uuid.uuid4().hex}:")
    try:
        assert redis_cache.add("k", "1", 60)
        assert other.get("k") is None
        assert other.add("k", "2", 60)
    finally:
        other.delete_namespace()
        other.close()


def test_unreachable_redis_is_a_clear_error() -> None:
    with pytest.raises(CacheUnavailable, match=r"redis://127\.0\.0\.1:1/0: ConnectionError"):
        open_cache("redis://:secret@127.0.0.1:1/0")
    assert redacted("redis://user:secret@cache.example.org:6380/2") == (
        "redis://cache.example.org:6380/2"
    )


def test_auth_cache_setting_is_validated() -> None:
    with pytest.raises(config.ConfigError, match="AUTH_CACHE"):
        config.load(test_config={"AUTH_CACHE": "memcached://x"})
    assert config.load(test_config={"AUTH_CACHE": REDIS_URL})["AUTH_CACHE"] == REDIS_URL


def test_an_unreachable_redis_stops_start_up(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    with pytest.raises(config.ConfigError, match="AUTH_CACHE: cannot use the shared cache"):
        kit.auth_app(make_app, tmp_path, AUTH_CACHE="redis://127.0.0.1:1/0")


def test_replay_is_caught_across_workers_with_redis(
    make_app: Callable[..., Flask], tmp_path: Path, redis_url: str
) -> None:
    """Two apps stand for two gunicorn workers (or two instances)."""
    token = kit.sign(kit.claims())
    memory = [kit.auth_app(make_app, tmp_path).test_client() for _ in range(2)]
    assert [c.get("/cds-services", headers=kit.bearer(token)).status_code for c in memory] == [
        200,
        200,  # each in-process cache sees the jti once: why several workers need Redis
    ]
    token = kit.sign(kit.claims())
    shared = [
        kit.auth_app(make_app, tmp_path, AUTH_CACHE=redis_url).test_client() for _ in range(2)
    ]
    assert [c.get("/cds-services", headers=kit.bearer(token)).status_code for c in shared] == [
        200,
        401,
    ]


def test_only_sharedcache_imports_redis() -> None:
    package = Path(__file__).resolve().parents[1] / "cds_server"
    users = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] == "redis" for n in names):
                users.add(path.name)
    assert users == {"sharedcache.py"}


def test_memory_cache_sweeps_expired_entries_periodically():
    from cds_server.sharedcache import MemoryCache

    now = [0.0]
    cache = MemoryCache(clock=lambda: now[0], sweep_seconds=60)
    for i in range(100):
        assert cache.add(f"jti-{i}", "1", ttl=30)
    now[0] = 61.0  # every entry has expired and a sweep is due
    assert cache.add("fresh", "1", ttl=30)
    assert len(cache._items) == 1


def test_a_silent_redis_answers_503_within_its_timeout_and_recovers(
    make_app: Callable[..., Flask], tmp_path: Path, redis_url: str
) -> None:
    """A Redis that accepts connections and never answers (paused proxy): each call is
    refused with 503 ``auth-unavailable`` after ``AUTH_CACHE_TIMEOUT``, no retry, no hang."""
    from tests.tcpproxy import PausableProxy

    with PausableProxy(6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        client = kit.auth_app(
            make_app, tmp_path, AUTH_CACHE=url, AUTH_CACHE_TIMEOUT=0.5
        ).test_client()
        assert (
            client.get("/cds-services", headers=kit.bearer(kit.sign(kit.claims()))).status_code
            == 200
        )
        proxy.pause()
        for _ in range(2):
            started = time.monotonic()
            resp = client.get("/cds-services", headers=kit.bearer(kit.sign(kit.claims())))
            took = time.monotonic() - started
            assert resp.status_code == 503
            assert resp.get_json()["issue"][0]["details"]["coding"][0]["code"] == "auth-unavailable"
            assert took < 0.5 + 1.0, f"{took:.2f} s with Redis silent"
        proxy.resume()
        token = kit.sign(kit.claims())
        assert client.get("/cds-services", headers=kit.bearer(token)).status_code == 200
        assert client.get("/cds-services", headers=kit.bearer(token)).status_code == 401  # replay


def test_auth_cache_timeout_is_validated() -> None:
    for bad in (0, -1, True, "1", 31):
        with pytest.raises(config.ConfigError, match="AUTH_CACHE_TIMEOUT"):
            config.load(test_config={"AUTH_CACHE_TIMEOUT": bad})
