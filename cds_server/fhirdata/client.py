"""The only door to the client's FHIR server, and the only user of ``requests``.

Policy, all enforced here:

* one ``requests.Session`` per hook call; the access token lives only in that object, is sent
  as ``Authorization: Bearer …`` only when non-empty, and is never logged or kept afterwards;
* adapters are mounted only for the ``fhirServer`` origin, so no request — and no token — can
  go to any other origin; redirects are never followed; proxies/netrc from the environment
  are ignored (``trust_env = False``);
* https only, unless the configuration allows http (``loopback`` for the demo, ``always`` for
  development and tests); optional allow-list of origins;
* short connect/read timeouts plus one wall-clock deadline for the whole hook call;
* searches follow ``Bundle.link[next]`` on the same origin only, up to a page cap, and all
  responses of a hook call share one byte budget;
* independent requests run in parallel on a small thread pool;
* log lines name the resource type, status, size and time — never URLs (they carry patient
  ids), bodies or tokens.
"""

from __future__ import annotations

import ipaddress
import json
import logging
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

from cds_server.errors import FhirUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
USER_AGENT = "infusion-safety-cds"


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
    return None


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
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.adapters.clear()
        adapter = HTTPAdapter(pool_maxsize=max(1, settings.max_workers), max_retries=0)
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

    def _get_json(self, url: str) -> dict[str, Any]:
        what = _what(url)
        if origin(url) != self.origin:
            raise FhirUnavailable(f"{what}: refusing to call another origin")
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
            chunks = []
            try:
                for chunk in resp.iter_content(chunk_size=65536):
                    self._spend(len(chunk))
                    chunks.append(chunk)
                    if self._remaining() <= 0:
                        raise FhirUnavailable(f"{what}: FHIR deadline exceeded")
            except requests.RequestException as exc:
                raise FhirUnavailable(
                    f"{what}: FHIR response failed ({type(exc).__name__})"
                ) from None
            raw = b"".join(chunks)
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

    def get(self, relative: str) -> FetchResult:
        """Read or search ``relative`` (e.g. ``Patient/1``, ``AllergyIntolerance?patient=1``)."""
        if urlsplit(relative).scheme or relative.startswith("/"):
            raise FhirUnavailable("only relative FHIR URLs may be requested")
        data = self._get_json(urljoin(self.base, relative))
        if data.get("resourceType") == "Bundle":
            return self.follow(data)
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

    def follow(self, bundle: Mapping[str, Any], pages_done: int = 1) -> FetchResult:
        """Append the pages after ``bundle`` (same origin only, page cap); drop its links."""
        merged = {k: v for k, v in bundle.items() if k != "link"}
        first = bundle.get("entry")
        entries = list(first) if isinstance(first, list) else []
        result = FetchResult(merged)
        url = self.next_link(bundle)
        pages = pages_done
        while url:
            absolute = urljoin(self.base, url)
            if origin(absolute) != self.origin:
                result.complete = False
                result.warnings.append("paging stopped: next link on another origin not followed")
                break
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
            for key, future in futures.items():
                try:
                    out[key] = future.result(timeout=max(0.0, self._remaining()) + 0.5)
                except FhirUnavailable as exc:
                    out[key] = exc
                except FutureTimeout:
                    out[key] = FhirUnavailable("FHIR deadline exceeded")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def read_many(self, refs: Iterable[str]) -> dict[str, dict[str, Any] | FhirUnavailable]:
        """Read ``Type/id`` references in parallel."""
        calls = {ref: (lambda ref=ref: self.get(ref).value) for ref in refs}
        return self.parallel(calls)
