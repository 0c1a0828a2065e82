"""A small key/value cache with expiry, shared by the replay check and the JWKS cache.

Two backends behind one interface (``SharedCache``):

* ``MemoryCache`` — in this process only (the default; right for one worker);
* ``RedisCache`` — shared by every gunicorn worker and every instance (``AUTH_CACHE=redis://…``).

This is the only module that talks to Redis. Keys are namespaced (``cds-server:``); values are
short strings. Backend failures raise ``CacheUnavailable`` so callers can fail closed. Every
Redis call has a deadline: ``timeout`` seconds to connect and to wait for each answer, and no
retry (a silent Redis costs one timeout per call, not several).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_PREFIX = "cds-server:"
DEFAULT_TIMEOUT = 1.0  # seconds (AUTH_CACHE_TIMEOUT)

T = TypeVar("T")


class CacheUnavailable(RuntimeError):
    """The shared cache could not be read or written."""


class SharedCache(Protocol):
    """What auth.py needs: an atomic add-if-absent, plus get and set, all with a TTL."""

    def add(self, key: str, value: str, ttl: float) -> bool:
        """Store ``key`` only if it is absent; True if this call stored it."""

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if absent or expired."""

    def set(self, key: str, value: str, ttl: float) -> None:
        """Store ``key`` (replacing any value) for ``ttl`` seconds."""


class MemoryCache:
    """``SharedCache`` in a dict, for one process; full (``max_entries``) → fail closed."""

    def __init__(
        self,
        *,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        sweep_seconds: float = 60.0,
    ):
        self._items: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._max = max_entries
        self._sweep_seconds = sweep_seconds
        self._next_sweep = clock() + sweep_seconds

    def __repr__(self) -> str:
        return "MemoryCache()"

    def _live(self, key: str, now: float) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._items[key]
            return None
        return item[1]

    def _store(self, key: str, value: str, ttl: float, now: float) -> None:
        if now >= self._next_sweep:
            # Drop expired entries periodically so memory tracks live tokens, not all tokens seen.
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            self._next_sweep = now + self._sweep_seconds
        if key not in self._items and len(self._items) >= self._max:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            if len(self._items) >= self._max:
                raise CacheUnavailable("in-process cache is full")
        self._items[key] = (now + max(ttl, 0.001), value)

    def add(self, key: str, value: str, ttl: float) -> bool:
        with self._lock:
            now = self._clock()
            if self._live(key, now) is not None:
                return False
            self._store(key, value, ttl, now)
            return True

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key, self._clock())

    def set(self, key: str, value: str, ttl: float) -> None:
        with self._lock:
            self._store(key, value, ttl, self._clock())


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisCache:
    """``SharedCache`` on Redis: ``SET NX PX`` for add, ``SET PX`` for set."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT):
        self.display = redacted(url)
        self._prefix = prefix
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    def __repr__(self) -> str:
        return f"RedisCache({self.display!r})"

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise CacheUnavailable(f"Redis at {self.display}: {type(exc).__name__}") from None

    def ping(self) -> None:
        self._call(self._client.ping)

    def add(self, key: str, value: str, ttl: float) -> bool:
        name = self._prefix + key
        return bool(self._call(lambda: self._client.set(name, value, nx=True, px=_ms(ttl))))

    def get(self, key: str) -> str | None:
        value = self._call(lambda: self._client.get(self._prefix + key))
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str, ttl: float) -> None:
        name = self._prefix + key
        self._call(lambda: self._client.set(name, value, px=_ms(ttl)))

    def delete_namespace(self) -> int:
        """Delete every key under this prefix (tests and maintenance); the number deleted."""

        def run() -> int:
            names = list(self._client.scan_iter(self._prefix + "*"))
            return int(self._client.delete(*names)) if names else 0

        return self._call(run)

    def close(self) -> None:
        self._client.close()


def redacted(url: str) -> str:
    """A Redis URL without its credentials, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


REDIS_SCHEMES = ("redis", "rediss", "unix")


def open_cache(spec: str, *, timeout: float = DEFAULT_TIMEOUT) -> SharedCache:
    """``"memory"`` or a Redis URL → a ready cache; Redis is pinged (``CacheUnavailable``)."""
    if spec == "memory":
        return MemoryCache()
    if urlsplit(spec).scheme not in REDIS_SCHEMES:
        raise ValueError("must be 'memory' or a redis://, rediss:// or unix:// URL")
    cache = RedisCache(spec, timeout=timeout)
    cache.ping()
    return cache
