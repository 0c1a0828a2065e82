"""The only door to the client's FHIR server, and the only user of ``requests``.

Policy, all enforced here:

* the access token lives only in the ``FhirClient`` of one hook call (its private header
  dict), is sent as ``Authorization: Bearer …`` on each of that call's requests only when
  non-empty, and is never logged, kept afterwards or stored in anything shared; no cookies
  are kept or sent;
* requests go only to the ``fhirServer`` origin: the client refuses any other URL and its
  adapter is bound to that one origin; redirects are never followed; proxies/netrc from the
  environment are never used (there is no ``requests.Session``);
* https only, unless the configuration allows http (``loopback`` for the demo, ``always`` for
  development and tests); optional allow-list of origins; with authentication on, only the
  ``fhirServer`` base URLs the authenticated client is trusted for (``allowed_servers``);
* the server's host must resolve only to public addresses, unless its network is allowed
  (``FHIR_ALLOWED_NETWORKS``; loopback too under ``FHIR_ALLOW_HTTP=loopback``). The host is
  checked at every hook call and again, pinned, at every new connection (no DNS rebinding);
  name resolution waits at most what is left of the deadline (connect timeout at connect);
* short connect/read timeouts plus one wall-clock deadline for the whole hook call; a request
  still waiting for its answer's headers at the deadline has its socket shut down
  (``socketwatch``), so no request thread outlives its call;
* searches follow ``Bundle.link[next]`` on the same origin only, up to a page cap, and all
  responses of a hook call share one byte budget;
* independent requests of a call run in parallel, at most ``max_workers`` at a time;
* log lines name the resource type, status, size and time — never URLs (they carry patient
  ids), bodies or tokens.

``FhirTransport`` (one per app) owns what outlives a hook call, created lazily in each
process (gunicorn forks after the app is built): the threads that run requests (an idle one
if any, else a new one, so a call stuck past its deadline never delays another) and
keep-alive connections per origin and address policy. A kept connection holds no headers,
credentials or cookies; it was pinned to an address checked when it was opened.

``fetch_jwks`` is the second, smaller door: it reads a trusted client's JWK Set (``jku``) for
``auth.py`` with the same transport rules (no redirects, no proxies, timeouts, size cap).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ipaddress
import json
import logging
import os
import platform
import queue
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_ACCEPT_ENCODING
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import connection as urllib3_connection

from cds_server.cdshooks.errors import FhirUnavailable
from cds_server.socketwatch import WATCHDOG

log = logging.getLogger(__name__)
# urllib3 logs request URLs — which carry patient ids — at DEBUG ("GET /fhir/Patient/…") and
# in some WARNINGs a FHIR server can trigger (malformed headers). Only errors get through.
logging.getLogger("urllib3").setLevel(logging.ERROR)

T = TypeVar("T")
USER_AGENT = "infusion-safety-cds"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolved = list[tuple[Address, tuple[Any, ...]]]
Resolver = Callable[[str, int, float], Resolved]
JWKS_MAX_BYTES = 256 * 1024
# Per process: idle request threads kept (60 s at most), kept-alive connections per origin,
# and origins with kept connections.
KEEP_IDLE_THREADS = 16
IDLE_THREAD_SECONDS = 60.0
KEEP_CONNECTIONS = 16
KEEP_ORIGINS = 32
# A hook call whose FHIR responses came to this many bytes asks for the heap to be trimmed.
TRIM_AFTER_BYTES = 1024 * 1024
# Errors of a kept-alive connection the server closed meanwhile: the GET is sent once more.
_DROPPED = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


@dataclass(frozen=True)
class FhirSettings:
    """Outbound FHIR policy, built once from the app configuration."""

    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    deadline: float = 4.0
    max_workers: int = 5
    max_pages: int = 10
    max_bytes: int = 10 * 1024 * 1024
    max_medication_reads: int = 20
    allow_http: str = "never"
    allow_unauthenticated: bool = False
    allowed_origins: tuple[str, ...] = ()
    # fhirServer base URLs (``base_url_key``) the caller may use; None = no per-client limit.
    allowed_servers: tuple[str, ...] | None = None
    # Non-public networks fhirServer may resolve to (public addresses are always allowed).
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FhirSettings:
        return cls(
            connect_timeout=float(config["FHIR_CONNECT_TIMEOUT"]),
            read_timeout=float(config["FHIR_READ_TIMEOUT"]),
            deadline=float(config["FHIR_DEADLINE"]),
            max_workers=int(config["FHIR_MAX_WORKERS"]),
            max_pages=int(config["FHIR_MAX_PAGES"]),
            max_bytes=int(config["FHIR_MAX_BYTES"]),
            max_medication_reads=int(config["FHIR_MAX_MEDICATION_READS"]),
            allow_http=str(config["FHIR_ALLOW_HTTP"]),
            allow_unauthenticated=bool(config["FHIR_ALLOW_UNAUTHENTICATED"]),
            allowed_origins=tuple(origin(o) or o.lower() for o in config["FHIR_ALLOWED_ORIGINS"]),
            allowed_networks=tuple(
                ipaddress.ip_network(n, strict=False) for n in config["FHIR_ALLOWED_NETWORKS"]
            ),
        )


@dataclass
class FetchResult:
    """A fetched resource or Bundle (all pages merged into ``entry``), and what went wrong."""

    value: dict[str, Any]
    complete: bool = True
    warnings: list[str] = field(default_factory=list)


def origin(url: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports dropped ('' if not a URL)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def base_url_key(url: str) -> str:
    """A base URL compared as data: origin (lower case, default port dropped) + path without
    a trailing slash; '' if not an http(s) URL."""
    found = origin(url)
    return found + urlsplit(url).path.rstrip("/") if found else ""


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_problem(base_url: str | None, settings: FhirSettings) -> str | None:
    """Why this ``fhirServer`` may not be called under ``settings`` (None = it may)."""
    if not base_url:
        return "no fhirServer was sent"
    parts = urlsplit(base_url)
    if not origin(base_url) or parts.username or parts.password or parts.query or parts.fragment:
        return "fhirServer is not a plain http(s) base URL"
    if parts.scheme == "http":
        if settings.allow_http == "never":
            return "fhirServer must use https"
        if settings.allow_http == "loopback" and not _is_loopback(base_url):
            return "fhirServer must use https (http is allowed only to loopback in this mode)"
    if settings.allowed_origins and origin(base_url) not in settings.allowed_origins:
        return "fhirServer is not on the configured allow-list"
    if settings.allowed_servers is not None and base_url_key(base_url) not in set(
        settings.allowed_servers
    ):
        return "fhirServer is not one of the FHIR servers this client is trusted for"
    return None


# -- addresses: no private, loopback or link-local targets unless allowed -----------------


def resolve_addresses(host: str, port: int) -> list[tuple[Address, tuple[Any, ...]]]:
    """Every address ``host`` resolves to, with its socket address (``OSError`` if none)."""
    found = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            found.append((ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), sockaddr))
    return found


def address_allowed(address: Address, settings: FhirSettings) -> bool:
    """Public unicast addresses always; others only inside an allowed network."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in settings.allowed_networks):
        return True
    if address.is_loopback and settings.allow_http == "loopback":
        return True
    return address.is_global and not address.is_multicast


def addresses_problem(addresses: Resolved, settings: FhirSettings) -> str | None:
    """Why these resolved addresses may not be called (None = every one is allowed)."""
    if not addresses:
        return "fhirServer host name could not be resolved"
    if not all(address_allowed(a, settings) for a, _ in addresses):
        return (
            "fhirServer resolves to a private, loopback or link-local address "
            "(allow its network with FHIR_ALLOWED_NETWORKS)"
        )
    return None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# -- memory: large responses leave freed memory in malloc's arenas -------------------------


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere: musl, macOS, Windows)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class _HeapTrim:
    """Returns free heap memory to the OS after hook calls that read large FHIR responses.

    glibc keeps what a thread freed in that thread's arena: a burst of near-cap responses
    (up to ``FHIR_MAX_BYTES`` each, parsed into many small objects, on several request
    threads) left a worker at 716 MB RSS for good (92 MB before). ``malloc_trim(0)`` gives
    the free pages of every arena back. A closing ``FhirClient`` that read at least
    ``TRIM_AFTER_BYTES`` marks the heap; the web layer calls ``release`` once the answer is
    sent (when the call's data is gone). A no-op where ``malloc_trim`` does not exist.
    """

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._trim = _find_malloc_trim()
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def mark(self) -> None:
        if self._trim is not None:
            self._wanted.set()

    def release(self) -> bool:
        """Trim the heap if a large call marked it since the last trim; True if it did."""
        if self._trim is None or not self._wanted.is_set():
            return False
        with self._lock:  # one trim at a time; calls arriving meanwhile need none
            if not self._wanted.is_set():
                return False
            self._wanted.clear()
            self._trim(0)
            self.trims += 1
        return True


HEAP = _HeapTrim()


# -- threads and connections that outlive one hook call ------------------------------------


class _Workers:
    """Threads that run callables: an idle one if any, else a new one (never a queue behind
    a stuck request). At most ``keep`` idle threads wait, each for ``idle_seconds``."""

    def __init__(self, keep: int, idle_seconds: float):
        self._keep = keep
        self._idle_seconds = idle_seconds
        self._idle: list[queue.SimpleQueue[Callable[[], None] | None]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads = 0  # alive
        self._running = 0  # running a task

    @property
    def threads(self) -> int:
        """Threads alive, idle or running a task."""
        with self._lock:
            return self._threads

    @property
    def running(self) -> int:
        """Threads running a task (the others wait idle for one)."""
        with self._lock:
            return self._running

    def run(self, fn: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(fn)
        else:
            with self._lock:
                self._threads += 1
            threading.Thread(target=self._serve, args=(fn,), name="fhir", daemon=True).start()

    def _serve(self, fn: Callable[[], None] | None) -> None:
        try:
            self._serve_tasks(fn)
        finally:
            with self._lock:
                self._threads -= 1

    def _serve_tasks(self, fn: Callable[[], None] | None) -> None:
        inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        while fn is not None:
            with self._lock:
                self._running += 1
            try:
                fn()
            except Exception as exc:  # tasks report their own outcome; never kill the thread
                log.error("FHIR worker task failed (%s)", type(exc).__name__)
            finally:
                with self._lock:
                    self._running -= 1
            fn = None
            with self._lock:
                if self._closed or len(self._idle) >= self._keep:
                    return
                self._idle.append(inbox)
            try:
                fn = inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                fn = inbox.get()  # handed a task just as the wait ended

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)


class _ProcessState:
    """What one process of the app keeps between hook calls (never shared across a fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.workers = _Workers(KEEP_IDLE_THREADS, IDLE_THREAD_SECONDS)
        self.adapters: collections.OrderedDict[tuple[Any, ...], _GuardedAdapter] = (
            collections.OrderedDict()
        )
        self.resolving: dict[tuple[str, int], Future[Resolved]] = {}

    def resolve(self, host: str, port: int, timeout: float) -> Resolved:
        """``resolve_addresses`` waiting at most ``timeout`` seconds (``TimeoutError``).

        A lookup runs on a request thread; one that hangs keeps that thread, shared by
        every caller asking for the same host meanwhile. IP literals need no lookup.
        """
        if _is_ip_literal(host):
            return resolve_addresses(host, port)
        key = (host, port)
        with self.lock:
            future = self.resolving.get(key)
            start = future is None
            if future is None:
                future = self.resolving[key] = Future()
        if start:

            def lookup(future: Future[Resolved] = future) -> None:
                try:
                    future.set_result(resolve_addresses(host, port))
                except BaseException as exc:
                    future.set_exception(exc)
                finally:
                    with self.lock:
                        if self.resolving.get(key) is future:
                            del self.resolving[key]

            self.workers.run(lookup)
        return future.result(timeout=max(0.0, timeout))

    def close(self) -> None:
        self.workers.close()
        with self.lock:
            adapters = list(self.adapters.values())
            self.adapters.clear()
        for adapter in adapters:
            adapter.close()


def _close_states(states: dict[int, _ProcessState]) -> None:
    state = states.pop(os.getpid(), None)
    states.clear()  # another process's threads and sockets are not this process's to close
    if state is not None:
        state.close()


class FhirTransport:
    """Request threads and keep-alive connections of one app, created lazily per process.

    Holds no token and no per-call state: ``client()`` opens the ``FhirClient`` of one hook
    call (the ``prefetch.ClientFactory`` the app uses).
    """

    def __init__(self) -> None:
        self._states: dict[int, _ProcessState] = {}
        self._finalizer = weakref.finalize(self, _close_states, self._states)

    def client(self, base_url: str, access_token: str | None, settings: FhirSettings) -> FhirClient:
        return FhirClient(base_url, access_token, settings, transport=self)

    def close(self) -> None:
        self._finalizer()

    def _local(self) -> _ProcessState:
        """This process's state; a forked child starts afresh (the parent's threads do not
        exist in it and its connections belong to the parent)."""
        pid = os.getpid()
        state = self._states.get(pid)
        if state is None:
            state = self._states.setdefault(pid, _ProcessState())  # one winner per process
            for other in [p for p in list(self._states) if p != pid]:
                self._states.pop(other, None)
        return state

    def run(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a request thread."""
        self._local().workers.run(fn)

    def resolve(self, host: str, port: int, timeout: float) -> Resolved:
        """``resolve_addresses`` waiting at most ``timeout`` seconds (``TimeoutError``)."""
        return self._local().resolve(host, port, timeout)

    def adapter(self, base_url: str, settings: FhirSettings) -> _GuardedAdapter:
        """The kept adapter (connection pool) for this origin under this address policy."""
        state = self._local()
        key = (origin(base_url), settings.allow_http, settings.allowed_networks)
        evicted = None
        with state.lock:
            adapter = state.adapters.get(key)
            if adapter is None:
                adapter = _GuardedAdapter(
                    settings, key[0], state.resolve, pool_maxsize=KEEP_CONNECTIONS, max_retries=0
                )
                state.adapters[key] = adapter
                if len(state.adapters) > KEEP_ORIGINS:
                    evicted = state.adapters.popitem(last=False)[1]
            else:
                state.adapters.move_to_end(key)
        if evicted is not None:
            evicted.close()  # idle connections now; those in use when they come back
        return adapter


# The end time (time.monotonic) of the hook call a request thread is sending for.
_call = threading.local()


class _GuardedConnectionMixin:
    """Resolve, check every address, then connect to a checked address (no second lookup)."""

    cds_settings: FhirSettings
    cds_resolve: Resolver
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        wait = self.timeout if isinstance(self.timeout, int | float) else None
        try:
            addresses = self.cds_resolve(
                self.host, self.port, self.cds_settings.connect_timeout if wait is None else wait
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, "name resolution timed out") from exc
        except (OSError, UnicodeError) as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        if not addresses or not all(address_allowed(a, self.cds_settings) for a, _ in addresses):
            raise NewConnectionError(self, "refused: address not allowed")  # type: ignore[arg-type]
        last: OSError | None = None
        for _, sockaddr in addresses:
            try:
                return urllib3_connection.create_connection(
                    (sockaddr[0], self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, "connection timed out") from exc
            except OSError as exc:
                last = exc
        raise NewConnectionError(self, f"failed to connect: {last}")  # type: ignore[arg-type]

    def getresponse(self, *args: Any, **kw: Any) -> Any:
        """The response's status line and headers, read by the hook call's deadline."""
        until = getattr(_call, "until", None)
        sock = getattr(self, "sock", None)
        if until is None or sock is None:
            return super().getresponse(*args, **kw)  # type: ignore[misc]
        ticket = WATCHDOG.watch(sock, until)
        try:
            return super().getresponse(*args, **kw)  # type: ignore[misc]
        finally:
            WATCHDOG.release(ticket)


class _GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` for one origin whose connections enforce the address policy at
    connect time. It holds no headers or credentials: those come with each request."""

    def __init__(self, settings: FhirSettings, bound_to: str, resolve: Resolver, **kw: Any):
        self.cds_settings = settings
        self.cds_origin = bound_to
        self.cds_resolve = resolve
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        attrs = {"cds_settings": self.cds_settings, "cds_resolve": staticmethod(self.cds_resolve)}
        http = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attrs)
        https = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }

    def send(self, request: requests.PreparedRequest, *args: Any, **kw: Any) -> requests.Response:
        if origin(request.url or "") != self.cds_origin:
            raise requests.exceptions.InvalidURL("refusing to call another origin")
        return super().send(request, *args, **kw)


def _dropped(exc: requests.RequestException) -> bool:
    """The connection was closed or reset before any answer came (e.g. a kept-alive one the
    server had just closed)."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, ProtocolError) and isinstance(
        cause.args[-1] if cause.args else None, _DROPPED
    )


def _what(url: str) -> str:
    """The resource type a URL is about, for log lines and messages (no ids, no query)."""
    path = urlsplit(url).path.rstrip("/")
    segments = [s for s in path.split("/") if s]
    for seg in reversed(segments):
        if seg[:1].isupper() and seg.isalpha():
            return seg
    return "FHIR"


class FhirClient:
    """FHIR reads and searches against one ``fhirServer`` for one hook call.

    Without a ``transport`` (tests, ``cds-server explain``) the client opens a private one
    and closes it with itself.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        settings: FhirSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        transport: FhirTransport | None = None,
    ):
        problem = server_problem(base_url, settings)
        if problem:
            raise FhirUnavailable(problem)
        self.base = base_url.rstrip("/") + "/"
        self.origin = origin(base_url)
        self.settings = settings
        self._clock = clock
        self._deadline = clock() + settings.deadline
        self._spent = 0
        self._lock = threading.Lock()
        self._address_lock = threading.Lock()
        self._address_checked: str | None = None  # "" = allowed, else the problem
        self._own_transport = transport is None
        self._transport = transport or FhirTransport()
        self._adapter = self._transport.adapter(base_url, settings)
        self._headers = {
            "Accept": "application/fhir+json",
            "Accept-Encoding": DEFAULT_ACCEPT_ENCODING,
            "User-Agent": USER_AGENT,
        }
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(origin={self.origin!r})"

    @property
    def bytes_read(self) -> int:
        """Response bytes read so far in this hook call."""
        return self._spent

    def close(self) -> None:
        self._headers.pop("Authorization", None)
        if self._spent >= TRIM_AFTER_BYTES:
            HEAP.mark()
        if self._own_transport:
            self._transport.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- single requests -------------------------------------------------------------------

    def _remaining(self) -> float:
        return self._deadline - self._clock()

    def _spend(self, n: int) -> None:
        with self._lock:
            self._spent += n
            if self._spent > self.settings.max_bytes:
                raise FhirUnavailable("FHIR responses exceeded the byte limit")

    def _check_address(self) -> None:
        """Resolve the server's host once per hook call, within the deadline; refuse
        non-allowed addresses."""
        with self._address_lock:
            if self._address_checked is None:
                parts = urlsplit(self.base)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                try:
                    found = self._transport.resolve(parts.hostname or "", port, self._remaining())
                    problem = addresses_problem(found, self.settings)
                except TimeoutError:
                    problem = "fhirServer host name could not be resolved within the FHIR deadline"
                except (OSError, UnicodeError):
                    problem = "fhirServer host name could not be resolved"
                self._address_checked = problem or ""
        if self._address_checked:
            raise FhirUnavailable(self._address_checked)

    def _send(self, url: str, what: str, *, retry: bool = True) -> requests.Response:
        """GET ``url`` with this call's headers; once more if a kept connection turns out to
        have been closed by the server (the request never got an answer)."""
        remaining = self._remaining()
        if remaining <= 0:
            raise FhirUnavailable(f"{what}: FHIR deadline exceeded")
        timeout = (
            min(self.settings.connect_timeout, remaining),
            min(self.settings.read_timeout, remaining),
        )
        request = requests.PreparedRequest()
        try:
            request.prepare(method="GET", url=url, headers=self._headers)
        except (requests.RequestException, ValueError) as exc:  # e.g. a header it cannot send
            raise FhirUnavailable(
                f"{what}: the request could not be built ({type(exc).__name__})"
            ) from None
        _call.until = time.monotonic() + remaining
        try:
            return self._adapter.send(request, stream=True, timeout=timeout, verify=True)
        except requests.Timeout:
            raise FhirUnavailable(f"{what}: FHIR server timed out") from None
        except requests.RequestException as exc:
            if self._remaining() <= 0:  # the watchdog shut a dripping answer down
                raise FhirUnavailable(f"{what}: FHIR deadline exceeded") from None
            if retry and _dropped(exc):
                return self._send(url, what, retry=False)
            raise FhirUnavailable(
                f"{what}: could not reach FHIR server ({type(exc).__name__})"
            ) from None
        finally:
            _call.until = None

    def _get_json(self, url: str) -> dict[str, Any]:
        what = _what(url)
        if origin(url) != self.origin:
            raise FhirUnavailable(f"{what}: refusing to call another origin")
        if self._remaining() <= 0:
            raise FhirUnavailable(f"{what}: FHIR deadline exceeded")
        self._check_address()
        started = self._clock()
        resp = self._send(url, what)
        try:
            if resp.status_code != 200:
                log.warning("FHIR GET %s answered %d", what, resp.status_code)
                raise FhirUnavailable(f"{what}: FHIR server answered HTTP {resp.status_code}")
            raw = self._read_body(resp, what)
        finally:
            resp.close()  # a fully read response went back to the pool already; else closed
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise FhirUnavailable(f"{what}: FHIR server sent invalid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FhirUnavailable(f"{what}: FHIR server sent something that is not a resource")
        log.debug(
            "FHIR GET %s: %d bytes in %.0f ms", what, len(raw), (self._clock() - started) * 1000
        )
        return data

    def _read_body(self, resp: requests.Response, what: str) -> bytearray:
        """The body, read as it arrives, within the deadline and the byte budget.

        ``read1`` returns whatever a single receive brings, so a server that drips bytes
        cannot keep the call alive past the deadline (``iter_content`` waits for full
        chunks); each receive may wait at most the read timeout or what is left.
        """
        body = resp.raw
        sock = getattr(getattr(body, "connection", None), "sock", None)
        buffer = bytearray()  # grown in place: no list of chunks plus a joined copy
        while True:
            remaining = self._remaining()
            if remaining <= 0:
                raise FhirUnavailable(f"{what}: FHIR deadline exceeded")
            if sock is not None and not body.closed:
                with contextlib.suppress(OSError):  # closed at the end of the body: no matter
                    sock.settimeout(min(self.settings.read_timeout, remaining))
            try:
                chunk = body.read1(65536, decode_content=True)
            except (ReadTimeoutError, TimeoutError):
                raise FhirUnavailable(f"{what}: FHIR server timed out") from None
            except (HTTPError, OSError) as exc:
                raise FhirUnavailable(
                    f"{what}: FHIR response failed ({type(exc).__name__})"
                ) from None
            if not chunk:
                return buffer
            self._spend(len(chunk))
            buffer += chunk

    def get(self, relative: str) -> FetchResult:
        """Read or search ``relative`` (e.g. ``Patient/1``, ``AllergyIntolerance?patient=1``)."""
        if urlsplit(relative).scheme or relative.startswith("/"):
            raise FhirUnavailable("only relative FHIR URLs may be requested")
        url = urljoin(self.base, relative)
        data = self._get_json(url)
        if data.get("resourceType") == "Bundle":
            return self.follow(data, read_from=url)
        return FetchResult(data)

    # -- paging ----------------------------------------------------------------------------

    @staticmethod
    def next_link(bundle: Mapping[str, Any]) -> str | None:
        links = bundle.get("link")
        for link in links if isinstance(links, list) else ():
            if isinstance(link, Mapping) and link.get("relation") == "next":
                url = link.get("url")
                return url if isinstance(url, str) and url else None
        return None

    def follow(
        self, bundle: Mapping[str, Any], pages_done: int = 1, read_from: str | None = None
    ) -> FetchResult:
        """Append the pages after ``bundle`` (same origin only, page cap, no page read twice);
        drop its links. ``read_from`` is the URL ``bundle`` was read from, if known."""
        merged = {k: v for k, v in bundle.items() if k != "link"}
        first = bundle.get("entry")
        entries = list(first) if isinstance(first, list) else []
        result = FetchResult(merged)
        url = self.next_link(bundle)
        pages = pages_done
        read = {read_from} if read_from else set()
        while url:
            absolute = urljoin(self.base, url)
            if origin(absolute) != self.origin:
                result.complete = False
                result.warnings.append("paging stopped: next link on another origin not followed")
                break
            if absolute in read:
                result.complete = False
                result.warnings.append("paging stopped: next link leads back to a page read")
                break
            read.add(absolute)
            if pages >= self.settings.max_pages:
                result.complete = False
                result.warnings.append(f"paging stopped after {pages} pages (limit)")
                break
            try:
                page = self._get_json(absolute)
            except FhirUnavailable as exc:
                result.complete = False
                result.warnings.append(f"paging stopped: {exc.message}")
                break
            if page.get("resourceType") != "Bundle":
                result.complete = False
                result.warnings.append("paging stopped: next page is not a Bundle")
                break
            pages += 1
            more = page.get("entry")
            entries.extend(more if isinstance(more, list) else ())
            url = self.next_link(page)
        merged["entry"] = entries
        if not entries:
            merged.pop("entry")
        return result

    # -- parallel --------------------------------------------------------------------------

    def parallel(self, calls: Mapping[str, Callable[[], T]]) -> dict[str, T | FhirUnavailable]:
        """Run independent calls on the transport's threads, at most ``max_workers`` at a
        time; failures are returned, not raised."""
        out: dict[str, T | FhirUnavailable] = {}
        if not calls:
            return out
        futures: dict[str, Future[T]] = {key: Future() for key in calls}
        todo = collections.deque((futures[key], fn) for key, fn in calls.items())

        def lane() -> None:
            while True:
                try:
                    future, fn = todo.popleft()
                except IndexError:
                    return
                if not future.set_running_or_notify_cancel():
                    continue  # the call has returned: nothing more is started
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        for _ in range(max(1, min(self.settings.max_workers, len(calls)))):
            self._transport.run(lane)
        grace = 0.5  # for a timeout that fires at the deadline to be reported as such
        try:
            for key, future in futures.items():
                try:
                    out[key] = future.result(timeout=max(0.0, self._remaining() + grace))
                except FhirUnavailable as exc:
                    out[key] = exc
                except TimeoutError:
                    out[key] = FhirUnavailable("FHIR deadline exceeded")
        finally:
            # Never wait for a call still running after the deadline; a read of dripped
            # headers is ended by the watchdog, a body read by its own deadline check.
            for future in futures.values():
                future.cancel()
        return out

    def read_many(self, refs: Iterable[str]) -> dict[str, dict[str, Any] | FhirUnavailable]:
        """Read ``Type/id`` references in parallel."""
        calls = {ref: (lambda ref=ref: self.get(ref).value) for ref in refs}
        return self.parallel(calls)


def fetch_jwks(
    url: str,
    *,
    timeout: tuple[float, float] = (1.0, 2.0),
    max_bytes: int = JWKS_MAX_BYTES,
) -> dict[str, Any]:
    """GET a trusted client's JWK Set (``jku``); ``ValueError`` with a safe message on failure.

    https only, no redirects, no proxies from the environment, a size cap. The URL comes from
    the operator's trusted-clients file, never from a token.
    """
    if urlsplit(url).scheme != "https":
        raise ValueError("JWKS URL must use https")
    with requests.Session() as session:
        session.trust_env = False
        try:
            resp = session.get(
                url,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            )
        except requests.RequestException as exc:
            raise ValueError(f"JWKS request failed ({type(exc).__name__})") from None
        try:
            if resp.status_code != 200:
                raise ValueError(f"JWKS endpoint answered HTTP {resp.status_code}")
            raw = b""
            try:
                for chunk in resp.iter_content(chunk_size=16384):
                    raw += chunk
                    if len(raw) > max_bytes:
                        raise ValueError("JWKS document exceeds the size limit")
            except requests.RequestException as exc:
                raise ValueError(f"JWKS response failed ({type(exc).__name__})") from None
        finally:
            resp.close()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("JWKS document is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("JWKS document has no 'keys' array")
    return data
