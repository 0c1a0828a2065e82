"""The only door to the client's FHIR server, and the only user of ``requests``.

Policy, all enforced here:

* one ``requests.Session`` per hook call; the access token lives only in that object, is sent
  as ``Authorization: Bearer …`` only when non-empty, and is never logged or kept afterwards;
* adapters are mounted only for the ``fhirServer`` origin, so no request — and no token — can
  go to any other origin; redirects are never followed; proxies/netrc from the environment
  are ignored (``trust_env = False``);
* https only, unless the configuration allows http (``loopback`` for the demo, ``always`` for
  development and tests); optional allow-list of origins; with authentication on, only the
  ``fhirServer`` base URLs the authenticated client is trusted for (``allowed_servers``);
* the server's host must resolve only to public addresses, unless its network is allowed
  (``FHIR_ALLOWED_NETWORKS``; loopback too under ``FHIR_ALLOW_HTTP=loopback``). The host is
  checked before the first request and again, pinned, at every connection (no DNS rebinding);
* short connect/read timeouts plus one wall-clock deadline for the whole hook call;
* searches follow ``Bundle.link[next]`` on the same origin only, up to a page cap, and all
  responses of a hook call share one byte budget;
* independent requests run in parallel on a small thread pool;
* log lines name the resource type, status, size and time — never URLs (they carry patient
  ids), bodies or tokens.

``fetch_jwks`` is the second, smaller door: it reads a trusted client's JWK Set (``jku``) for
``auth.py`` with the same transport rules (no redirects, no proxies, timeouts, size cap).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util import connection as urllib3_connection

from cds_server.errors import FhirUnavailable

log = logging.getLogger(__name__)
# urllib3 logs request URLs — which carry patient ids — at DEBUG ("GET /fhir/Patient/…") and
# in some WARNINGs a FHIR server can trigger (malformed headers). Only errors get through.
logging.getLogger("urllib3").setLevel(logging.ERROR)

T = TypeVar("T")
USER_AGENT = "infusion-safety-cds"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
JWKS_MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class FhirSettings:
    """Outbound FHIR policy, built once from the app configuration."""

    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    deadline: float = 4.0
    max_workers: int = 4
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


def address_problem(host: str, port: int, settings: FhirSettings) -> str | None:
    """Why ``host`` may not be called (None = every address it resolves to is allowed)."""
    try:
        addresses = resolve_addresses(host, port)
    except (OSError, UnicodeError):
        return "fhirServer host name could not be resolved"
    if not addresses:
        return "fhirServer host name could not be resolved"
    if not all(address_allowed(a, settings) for a, _ in addresses):
        return (
            "fhirServer resolves to a private, loopback or link-local address "
            "(allow its network with FHIR_ALLOWED_NETWORKS)"
        )
    return None


class _GuardedConnectionMixin:
    """Resolve, check every address, then connect to a checked address (no second lookup)."""

    cds_settings: FhirSettings
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            addresses = resolve_addresses(self.host, self.port)
        except socket.gaierror as exc:
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


class _GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections enforce the address policy at connect time."""

    def __init__(self, settings: FhirSettings, **kw: Any):
        self.cds_settings = settings
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kw: Any) -> None:
        super().init_poolmanager(*args, **kw)
        attrs = {"cds_settings": self.cds_settings}
        http = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), attrs)
        https = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), attrs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
        }


def _what(url: str) -> str:
    """The resource type a URL is about, for log lines and messages (no ids, no query)."""
    path = urlsplit(url).path.rstrip("/")
    segments = [s for s in path.split("/") if s]
    for seg in reversed(segments):
        if seg[:1].isupper() and seg.isalpha():
            return seg
    return "FHIR"


class FhirClient:
    """FHIR reads and searches against one ``fhirServer`` for one hook call."""

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        settings: FhirSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
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
        self._address_checked: str | None = None  # "" = allowed, else the problem
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.adapters.clear()
        adapter = _GuardedAdapter(
            settings, pool_maxsize=max(1, settings.max_workers), max_retries=0
        )
        mount_at = f"{urlsplit(base_url).scheme}://{urlsplit(base_url).netloc}/"
        self._session.mount(mount_at, adapter)
        self._session.headers.update({"Accept": "application/fhir+json", "User-Agent": USER_AGENT})
        if access_token:
            self._session.headers["Authorization"] = f"Bearer {access_token}"

    def __repr__(self) -> str:  # never show the token
        return f"FhirClient(origin={self.origin!r})"

    def close(self) -> None:
        self._session.close()

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
        """Resolve the server's host once per hook call; refuse non-allowed addresses."""
        with self._lock:
            if self._address_checked is None:
                parts = urlsplit(self.base)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                self._address_checked = (
                    address_problem(parts.hostname or "", port, self.settings) or ""
                )
        if self._address_checked:
            raise FhirUnavailable(self._address_checked)

    def _get_json(self, url: str) -> dict[str, Any]:
        what = _what(url)
        if origin(url) != self.origin:
            raise FhirUnavailable(f"{what}: refusing to call another origin")
        self._check_address()
        remaining = self._remaining()
        if remaining <= 0:
            raise FhirUnavailable(f"{what}: FHIR deadline exceeded")
        timeout = (
            min(self.settings.connect_timeout, remaining),
            min(self.settings.read_timeout, remaining),
        )
        started = self._clock()
        try:
            resp = self._session.get(url, timeout=timeout, allow_redirects=False, stream=True)
        except requests.Timeout:
            raise FhirUnavailable(f"{what}: FHIR server timed out") from None
        except requests.RequestException as exc:
            raise FhirUnavailable(
                f"{what}: could not reach FHIR server ({type(exc).__name__})"
            ) from None
        try:
            if resp.status_code != 200:
                log.warning("FHIR GET %s answered %d", what, resp.status_code)
                raise FhirUnavailable(f"{what}: FHIR server answered HTTP {resp.status_code}")
            raw = self._read_body(resp, what)
        finally:
            resp.close()
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

    def _read_body(self, resp: requests.Response, what: str) -> bytes:
        """The body, read as it arrives, within the deadline and the byte budget.

        ``read1`` returns whatever a single receive brings, so a server that drips bytes
        cannot keep the call alive past the deadline (``iter_content`` waits for full
        chunks); each receive may wait at most the read timeout or what is left.
        """
        body = resp.raw
        sock = getattr(getattr(body, "connection", None), "sock", None)
        chunks = []
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
                return b"".join(chunks)
            self._spend(len(chunk))
            chunks.append(chunk)

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
        """Run independent calls on the thread pool; failures are returned, not raised."""
        out: dict[str, T | FhirUnavailable] = {}
        if not calls:
            return out
        workers = max(1, min(self.settings.max_workers, len(calls)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fhir")
        try:
            futures = {key: pool.submit(fn) for key, fn in calls.items()}
            grace = 0.5  # for a timeout that fires at the deadline to be reported as such
            for key, future in futures.items():
                try:
                    out[key] = future.result(timeout=max(0.0, self._remaining() + grace))
                except FhirUnavailable as exc:
                    out[key] = exc
                except FutureTimeout:
                    out[key] = FhirUnavailable("FHIR deadline exceeded")
        finally:
            # Never wait for a call still running after the deadline (a server dripping its
            # status line or headers holds a read open); it ends on its own socket timeout.
            pool.shutdown(wait=False, cancel_futures=True)
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
