"""Load generators: ``wrk`` (preferred) and a small Python one (fallback and smoke runs).

Both run a closed loop: ``connections`` keep-alive connections, each sending the next
request as soon as the previous answer has arrived, for ``duration`` seconds. Both return a
``LoadResult``; any non-2xx answer, socket error or timeout counts as an error, and the
Python generator can also check every answer's body (``check``).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "post.lua"

# Returns None when the answer is right, else a short description of what is wrong.
Check = Callable[[int, bytes], str | None]
PLACEHOLDER = re.compile(rb"@@([A-Z]+)@@")


class BodyTemplate:
    """A request body whose ``@@HOOK@@``, ``@@ENC@@`` and ``@@PAT@@`` placeholders get values
    unique to each request — a new hookInstance, encounter and patient (as ``post.lua``)."""

    def __init__(self, raw: bytes):
        parts = PLACEHOLDER.split(raw)
        self.pieces, self.names = parts[0::2], [p.decode() for p in parts[1::2]]

    def render(self, thread: int, n: int) -> bytes:
        key = f"{thread:03x}{n:012x}"
        values = {
            "HOOK": f"b3e1c7a0-0000-4000-8{key[:3]}-{key[3:]}",
            "ENC": f"bench-enc-{key}",
            "PAT": f"pat-bench-{key}",
        }
        out = [self.pieces[0]]
        for name, piece in zip(self.names, self.pieces[1:], strict=True):
            out += [values[name].encode(), piece]
        return b"".join(out)


@dataclass
class LoadResult:
    """What one load run measured (latencies in milliseconds)."""

    generator: str
    requests: int
    duration: float
    p50: float
    p95: float
    p99: float
    mean: float
    max: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def python_load(
    host: str,
    port: int,
    path: str,
    body: BodyTemplate,
    *,
    connections: int,
    duration: float,
    check: Check | None = None,
    timeout: float = 10.0,
    salt: int = 0,
    tokens: list[str] | None = None,
) -> LoadResult:
    """Closed-loop load from ``connections`` threads with http.client keep-alive.

    ``salt`` (0-254) keeps this run's hookInstances, encounters and patients apart from
    other runs'. ``tokens``: JWTs, each sent once as ``Authorization: Bearer`` (thread i uses
    ``tokens[i::connections]``); when they run out the server answers 401, an error."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[Counter[str]] = [Counter() for _ in range(connections)]
    start = threading.Barrier(connections + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        mine = iter(tokens[i::connections]) if tokens is not None else None
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        start.wait()
        n = 0
        while time.perf_counter() < deadline[0]:
            n += 1
            data = body.render(salt * 16 + i, n)
            sent = headers
            if mine is not None:
                sent = {**headers, "Authorization": f"Bearer {next(mine, 'exhausted')}"}
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=data, headers=sent)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors[i][type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
                continue
            latencies[i].append((time.perf_counter() - t0) * 1000)
            if not 200 <= resp.status < 300:
                errors[i][f"HTTP {resp.status}"] += 1
            elif check is not None:
                problem = check(resp.status, data)
                if problem:
                    errors[i][problem] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    deadline[0] = began + duration
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    values = sorted(v for per in latencies for v in per)
    total: Counter[str] = Counter()
    for c in errors:
        total.update(c)
    return LoadResult(
        generator="python",
        requests=len(values),
        duration=elapsed,
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        mean=sum(values) / len(values) if values else 0.0,
        max=values[-1] if values else 0.0,
        errors=dict(total),
    )


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_load(
    host: str,
    port: int,
    path: str,
    body_file: Path,
    *,
    connections: int,
    duration: float,
    threads: int = 2,
    salt: int = 0,
    tokens_file: Path | None = None,
) -> LoadResult:
    """Closed-loop load with ``wrk`` and ``bench/post.lua`` (which prints a JSON summary)."""
    threads = min(threads, connections)
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: sudo apt-get install -y wrk)")
    cmd = [
        exe,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        "--timeout=10s",
        f"--script={LUA}",
        f"http://{host}:{port}{path}",
        "--",
        str(body_file),
        str(salt),
        *((str(tokens_file), str(threads)) if tokens_file else ()),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    line = next(
        (x for x in out.stdout.splitlines() if x.startswith("BENCH-JSON ")),
        None,
    )
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    s = json.loads(line.removeprefix("BENCH-JSON "))
    errors = {k: int(v) for k, v in s["errors"].items() if v}
    return LoadResult(
        generator="wrk",
        requests=int(s["requests"]),
        duration=s["duration_us"] / 1e6,
        p50=s["p50_us"] / 1000,
        p95=s["p95_us"] / 1000,
        p99=s["p99_us"] / 1000,
        mean=s["mean_us"] / 1000,
        max=s["max_us"] / 1000,
        errors=errors,
    )
