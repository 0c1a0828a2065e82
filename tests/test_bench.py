"""The benchmark harness (``bench/``): its data is what the generator writes, and a seconds-long
smoke run under gunicorn answers every request correctly.

The smoke run fails on any error under load (non-2xx, socket error, a card list that differs
from the first answer, FHIR round trips beyond one per missing key) and never on timing:
speed is measured by ``bench/run``, not by tests.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from bench import fixture, run
from bench.jwtgen import ALGORITHMS, ISS, Signer
from bench.loadgen import BodyTemplate, LoadResult, percentile
from cds_server.sharedcache import MemoryCache
from cds_server.web import trusted_clients
from cds_server.web.auth import AuthFailure, Verifier


@pytest.mark.parametrize("name", sorted(fixture.FILES))
def test_bench_data_is_generated(name: str) -> None:
    """``bench/data`` is exactly what ``python bench/fixture.py`` writes (deterministic)."""
    assert (fixture.DATA / name).read_text(encoding="utf-8") == fixture.render(name)


def test_bench_patient_is_the_issue_s_patient() -> None:
    body = fixture.order_sign()
    meds = body["prefetch"]["medications"]["entry"]
    history = [e for e in meds if e["resource"]["resourceType"] == "MedicationRequest"]
    assert len(history) == 60
    assert len(body["prefetch"]["allergies"]["entry"]) == 5
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    infusions = {d["medicationCodeableConcept"]["text"] for d in drafts if "dispenseRequest" in d}
    assert infusions == {"carboplatin", "paclitaxel", "bevacizumab"}
    assert "Fictional-" in body["prefetch"]["patient"]["name"][0]["family"]


def test_body_template_gives_each_request_its_own_session() -> None:
    template = BodyTemplate(b'{"h":"@@HOOK@@","c":{"e":"@@ENC@@","p":"@@PAT@@"}}')
    first, second = template.render(1, 1), template.render(1, 2)
    assert first != second and b"@@" not in first
    assert first == b'{"h":"b3e1c7a0-0000-4000-8001-000000000001","c":' + (
        b'{"e":"bench-enc-001000000000001","p":"pat-bench-001000000000001"}}'
    )


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_bench_tokens_pass_the_service_s_own_checks(alg: str, tmp_path: Path) -> None:
    signer, other = Signer(alg), Signer(alg)
    other.kid = signer.kid  # another key under the same kid
    clients = trusted_clients.load(str(signer.clients_file(tmp_path / "c.yaml", [])))
    verifier = Verifier(clients, cache=MemoryCache())
    aud = "http://127.0.0.1:1/cds-services/infusion-safety"
    token = signer.sign(aud, int(time.time()))
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert verifier.verify(token, [aud]).client.iss == ISS
    with pytest.raises(AuthFailure, match="replayed"):
        verifier.verify(token, [aud])
    with pytest.raises(AuthFailure, match="bad signature"):
        verifier.verify(other.sign(aud, int(time.time())), [aud])


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50, 99, 0)


def test_smoke_run_has_no_errors(tmp_path: Path) -> None:
    args = run.parse_args(["--smoke", "--logdir", str(tmp_path)])
    out = run.run(args, say=lambda _line: None)
    assert out["problems"] == [], run.report(out)
    by = {m.workload: m for m in out["results"]}
    assert set(by) == {w.key for w in run.WORKLOADS}
    for m in by.values():
        assert m.load.requests > 0 and m.load.error_count == 0
        assert m.cpu_ms_per_request > 0 and m.peak_rss_mb > 0
    # Missing prefetch: the five keys fetched at once, Medications by _include (no second trip).
    assert by["no-prefetch"].fhir_requests_per_call == 5
    assert len(out["demo_ready_s"]) == 1
    text = run.report(out)
    assert "workload 1 throughput ÷ floor throughput" in text and "ERROR" not in text


def _measured(p99: float, requests: int, cpu: float, split: tuple[float, ...]) -> run.Measured:
    load = LoadResult("wrk", requests, 10.0, p99 / 2, p99 * 0.8, p99, p99 / 2, p99 * 1.5)
    return run.Measured("order-sign", "1 order-sign", load, cpu, 100.0 + cpu, None, split)


def test_repeated_runs_combine_into_medians_and_keep_each_run() -> None:
    runs = [
        _measured(50.0, 3000, 6.0, (0.5, 0.5)),
        _measured(90.0, 2000, 8.0, (0.3, 0.7)),  # one disturbed run
        _measured(55.0, 2800, 6.5, (0.4, 0.6)),
    ]
    m = run.combine(runs)
    assert m.load.p99 == 55.0 and m.load.p50 == 27.5  # medians: the disturbed run moves nothing
    assert m.cpu_ms_per_request == 6.5 and m.peak_rss_mb == 108.0
    assert m.load.requests == 7800 and m.load.throughput == 7800 / 30.0  # all runs together
    assert m.load.max == 135.0 and m.worker_cpu_split == (0.4, 0.6)
    assert m.runs == tuple(runs)
    assert run.combine(runs[:1]) is runs[0]  # one run: as measured, no ``runs``


def test_smoke_run_with_repeats_reports_each_run(tmp_path: Path) -> None:
    args = run.parse_args(
        ["--smoke", "--repeat", "2", "--only", "floor", "--logdir", str(tmp_path)]
    )
    args.demo_runs = 0
    out = run.run(args, say=lambda _line: None)
    assert out["problems"] == [], run.report(out)
    (m,) = out["results"]
    assert len(m.runs) == 2 and m.load.requests == sum(r.load.requests for r in m.runs) > 0
    text = run.report(out)
    assert "4 floor (parse + fixed cards), each of 2 runs: req/s" in text
    assert "2 × 1 s per workload" in text
    assert len(run.to_json(out)["results"][0]["runs"]) == 2


@pytest.mark.parametrize(
    ("split", "fair"),
    [((0.5, 0.5), True), ((0.25, 0.75), True), ((0.24, 0.76), False), ((0.0, 1.0), False)],
)
def test_a_run_is_balanced_when_no_worker_did_more_than_three_quarters(
    split: tuple[float, ...], fair: bool
) -> None:
    assert run.balanced(_measured(50.0, 1000, 5.0, split)) is fair
    assert run.balanced(_measured(50.0, 1000, 5.0, (1.0,)))  # one worker: nothing to share


def _short_floor_run(tmp_path: Path) -> tuple[dict[str, Any], list[str]]:
    options = ["--only", "floor", "--duration", "1", "--warmup", "0", "--loadgen", "python"]
    args = run.parse_args([*options, "--logdir", str(tmp_path)])
    args.demo_runs = 0
    said: list[str] = []
    return run.run(args, say=said.append), said


def test_a_run_one_worker_did_alone_is_listed_not_counted_and_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdicts = iter([False, False, True])
    monkeypatch.setattr(run, "balanced", lambda m: next(verdicts))
    out, said = _short_floor_run(tmp_path)
    assert out["problems"] == [], run.report(out)
    (m,) = out["results"]
    assert len(m.set_aside) == 2 and m.load.requests > 0
    assert sum("unbalanced: not counted" in line for line in said) == 2
    assert "4 floor (parse + fixed cards): 2 run(s) not counted, one worker doing" in run.report(
        out
    )
    assert len(run.to_json(out)["results"][0]["set_aside"]) == 2


def test_runs_are_set_aside_at_most_rebalance_limit_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "balanced", lambda m: False)
    monkeypatch.setattr(run, "REBALANCE_LIMIT", 1)
    out, _ = _short_floor_run(tmp_path)
    (m,) = out["results"]
    assert len(m.set_aside) == 1 and m.load.requests > 0  # the next run counts, whatever
