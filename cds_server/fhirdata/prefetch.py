"""Prefetch resolution: the per-key decision table of CDS Hooks 2.0 §prefetch-template.

For every declared key:

============================================  ==============================================
value received in ``prefetch``                decision
============================================  ==============================================
a resource                                    use it
a Bundle (``searchset``/``collection``)       use its resources; ``include`` entries too
a Bundle with ``link[next]``                  follow ``next`` via the FHIR server when it is
                                              usable, else use what is there, warn, and mark
                                              the data incomplete (``known = False``)
``null``                                      the client has no data: empty, known
an OperationOutcome, or a Bundle whose        treat as missing
``search.mode = outcome`` entry has an
error/fatal issue
key absent                                    missing
============================================  ==============================================

Missing keys are fetched — only those — from ``fhirServer`` when it is usable (a
``fhirAuthorization`` was sent, or the configuration allows open servers, and the
server passes the client policy), in parallel. Required data that is still unavailable
raises ``PrefetchUnavailable`` (412) naming the keys; optional data becomes unknown with a
warning (none for a ``quiet_when_absent`` key that was simply not sent and could not be
fetched: its absence is the common case, not a problem worth a line on every card).
Finally, ``medicationReference``\\ s that nothing resolved are read by id.
Warnings name keys and resource types only, never values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cds_server.cdshooks.errors import FhirUnavailable, PrefetchUnavailable, TemplateError
from cds_server.fhirdata import templates
from cds_server.fhirdata.client import FetchResult, FhirClient, FhirSettings, server_problem
from cds_server.fhirdata.parse import medication_ref_key, resources_of

ClientFactory = Callable[[str, str | None, FhirSettings], FhirClient]


@dataclass(frozen=True)
class PrefetchSpec:
    """One declared prefetch key: its template, whether the service needs it, what to include.

    ``quiet_when_absent``: an optional key that most clients do not send; when it is absent
    and no FHIR server may be used it is unknown without a warning.
    """

    key: str
    template: str
    required: bool
    include: str | None = None
    quiet_when_absent: bool = False

    def query(self, context: Mapping[str, Any], *, fetching: bool = False) -> str:
        """The relative FHIR URL for this key (with ``_include`` when we fetch it ourselves)."""
        url = templates.render(self.template, context)
        if fetching and self.include:
            url += ("&" if "?" in url else "?") + f"_include={self.include}"
        return url


@dataclass(frozen=True)
class KeyData:
    """The resolved data of one key.

    ``known`` is False when the data could not be obtained at all (``resources`` empty) or
    is known to be incomplete (``resources`` holds what was received).
    """

    resources: tuple[Mapping[str, Any], ...]
    known: bool
    source: str  # "prefetch" | "null" | "fhir" | "unavailable"


@dataclass(frozen=True)
class Resolved:
    """Everything the record builder needs from prefetch and the FHIR server."""

    data: Mapping[str, KeyData]
    medications: Mapping[str, Mapping[str, Any]]
    warnings: tuple[str, ...]
    fetched: tuple[str, ...] = ()


def _outcome_is_error(outcome: Any) -> bool:
    issues = outcome.get("issue") if isinstance(outcome, Mapping) else None
    if not isinstance(issues, list) or not issues:
        return True
    return any(
        not isinstance(i, Mapping) or i.get("severity") not in ("information", "warning")
        for i in issues
    )


def _outcome_entries(bundle: Mapping[str, Any]) -> list[Any]:
    out = []
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, Mapping):
            continue
        search = entry.get("search")
        resource = entry.get("resource")
        is_outcome = isinstance(search, Mapping) and search.get("mode") == "outcome"
        if is_outcome or (
            isinstance(resource, Mapping) and resource.get("resourceType") == "OperationOutcome"
        ):
            out.append(resource)
    return out


def classify(value: Any) -> tuple[str, str]:
    """(kind, why) for one received value: kind is ``use``, ``paged``, ``null`` or ``missing``."""
    if value is None:
        return "null", "no data"
    if not isinstance(value, Mapping) or not isinstance(value.get("resourceType"), str):
        return "missing", "not a FHIR resource"
    rtype = value["resourceType"]
    if rtype == "OperationOutcome":
        return "missing", "an OperationOutcome"
    if rtype == "Bundle":
        if not all(isinstance(value.get(k, []), list) for k in ("entry", "link")):
            return "missing", "a malformed Bundle"
        outcomes = _outcome_entries(value)
        if any(_outcome_is_error(o) for o in outcomes):
            return "missing", "a Bundle reporting an error (search.mode = outcome)"
        if FhirClient.next_link(value):
            return "paged", "a paginated Bundle"
        if outcomes:
            return "use", "a Bundle with an informational outcome"
    return "use", "data"


def _fhir_access(
    fhir_server: str | None, authorization: Mapping[str, Any] | None, settings: FhirSettings
) -> tuple[str | None, str | None]:
    """(token or None, problem or None): whether and how the FHIR server may be used."""
    if not fhir_server:
        return None, "no fhirServer was sent"
    if authorization is None and not settings.allow_unauthenticated:
        return None, "fhirServer was sent without fhirAuthorization"
    problem = server_problem(fhir_server, settings)
    if problem:
        return None, problem
    token = authorization.get("access_token") if authorization else None
    return (token if isinstance(token, str) and token else None), None


_REFERRERS = frozenset({"MedicationRequest", "MedicationAdministration"})


def _medication_refs(
    resources: Iterable[Mapping[str, Any]], known: Mapping[str, Any], fhir_server: str | None
) -> list[str]:
    """``Medication/{id}`` keys referenced by MedicationRequests or MedicationAdministrations
    and not yet resolved."""
    base = (fhir_server or "").rstrip("/") + "/"
    wanted: list[str] = []
    for res in resources:
        rtype = res.get("resourceType")
        if not isinstance(rtype, str) or rtype not in _REFERRERS:
            continue
        ref_obj = res.get("medicationReference")
        ref = ref_obj.get("reference") if isinstance(ref_obj, Mapping) else None
        if not isinstance(ref, str) or ref.startswith("#"):
            continue
        key = medication_ref_key(ref)
        if key is None or key in known or key in wanted:
            continue
        is_relative = "://" not in ref
        if is_relative or (fhir_server and ref.startswith(base)):
            wanted.append(key)
    return wanted


def _index_medications(resources: Iterable[Mapping[str, Any]], into: dict[str, Any]) -> None:
    for res in resources:
        if res.get("resourceType") == "Medication" and isinstance(res.get("id"), str):
            into.setdefault(f"Medication/{res['id']}", res)


_NOT_PREFETCHED = "not prefetched"


@dataclass
class _State:
    """Working state of one resolution (private)."""

    data: dict[str, KeyData]
    missing: dict[str, str]
    paged: dict[str, Mapping[str, Any]]
    warnings: list[str]
    unavailable: dict[str, str]
    fetched: list[str]
    # Optional keys unknown without a warning (``PrefetchSpec.quiet_when_absent``).
    quiet: set[str] = field(default_factory=set)


def _receive(specs: Sequence[PrefetchSpec], prefetch: Mapping[str, Any]) -> _State:
    """Sort every declared key by what the client sent for it."""
    state = _State({}, {}, {}, [], {}, [])
    for spec in specs:
        if spec.key not in prefetch:
            state.missing[spec.key] = _NOT_PREFETCHED
            continue
        value = prefetch[spec.key]
        kind, why = classify(value)
        if kind == "null":
            state.data[spec.key] = KeyData((), True, "null")
        elif kind == "missing":
            state.missing[spec.key] = f"prefetched value was {why}"
            state.warnings.append(f"prefetch '{spec.key}' was {why}; treated as missing")
        else:
            state.data[spec.key] = KeyData(tuple(resources_of(value)), True, "prefetch")
            if kind == "paged":
                state.paged[spec.key] = value
    return state


def _fetch(
    client: FhirClient,
    specs: Sequence[PrefetchSpec],
    context: Mapping[str, Any],
    state: _State,
) -> None:
    """Fetch the missing keys and the remaining pages of paged ones, in parallel."""
    calls: dict[str, Callable[[], FetchResult]] = {}
    for spec in specs:
        if spec.key in state.missing:
            try:
                query = spec.query(context, fetching=True)
            except TemplateError as exc:
                state.unavailable[spec.key] = str(exc)
                continue
            calls[spec.key] = partial(client.get, query)
        elif spec.key in state.paged:
            calls[spec.key] = partial(client.follow, state.paged[spec.key])
    for key, result in client.parallel(calls).items():
        paged = key in state.paged
        if isinstance(result, FhirUnavailable):
            if paged:
                state.data[key] = KeyData(state.data[key].resources, False, "prefetch")
                state.warnings.append(f"prefetch '{key}' is incomplete: {result.message}")
            else:
                state.unavailable[key] = result.message
            continue
        kind, why = classify(result.value)
        if kind in ("missing", "null"):
            state.unavailable[key] = f"the FHIR server returned {why}"
            continue
        resources = tuple(resources_of(result.value))
        state.data[key] = KeyData(resources, result.complete, "prefetch" if paged else "fhir")
        if not paged:
            state.fetched.append(key)
        state.warnings.extend(f"'{key}': {w}" for w in result.warnings)


def _without_server(specs: Sequence[PrefetchSpec], state: _State, problem: str) -> None:
    quiet = {s.key for s in specs if s.quiet_when_absent}
    for key, why in state.missing.items():
        state.unavailable[key] = problem
        if key in quiet and why == _NOT_PREFETCHED:
            state.quiet.add(key)
    for key in state.paged:
        state.data[key] = KeyData(state.data[key].resources, False, "prefetch")
        state.warnings.append(
            f"prefetch '{key}' is paginated and the next pages cannot be fetched "
            f"({problem}); using the first page only"
        )


def _settle(specs: Sequence[PrefetchSpec], state: _State) -> None:
    """412 for unavailable required keys; unknown (with a warning) for optional ones."""
    required_gone = [s.key for s in specs if s.required and s.key in state.unavailable]
    if required_gone:
        reasons = sorted({state.unavailable[k] for k in required_gone})
        raise PrefetchUnavailable(required_gone, "; ".join(reasons))
    for spec in specs:
        if spec.key in state.unavailable:
            state.data[spec.key] = KeyData((), False, "unavailable")
            if spec.key in state.quiet:
                continue
            state.warnings.append(
                f"optional data '{spec.key}' unavailable ({state.unavailable[spec.key]}); "
                "treated as unknown"
            )


def _medications(
    state: _State,
    extra_resources: Sequence[Mapping[str, Any]],
    fhir_server: str | None,
    client: Callable[[], FhirClient | None],
    cap: int,
    problem: str | None,
) -> dict[str, Any]:
    """Medication resources by ``Medication/{id}``; unresolved references are read by id."""
    index: dict[str, Any] = {}
    for kd in state.data.values():
        _index_medications(kd.resources, index)
    _index_medications(extra_resources, index)
    sources = [r for kd in state.data.values() for r in kd.resources]
    refs = _medication_refs([*extra_resources, *sources], index, fhir_server)
    if not refs:
        return index
    reader = client()
    if reader is None:
        state.warnings.append(f"{len(refs)} Medication reference(s) not resolved ({problem})")
        return index
    if len(refs) > cap:
        state.warnings.append(f"{len(refs) - cap} Medication reference(s) not read (limit)")
    for ref, got in reader.read_many(refs[:cap]).items():
        if isinstance(got, FhirUnavailable):
            state.warnings.append(f"Medication reference not resolved: {got.message}")
        elif got.get("resourceType") == "Medication":
            index[ref] = got
    return index


def resolve(
    specs: Sequence[PrefetchSpec],
    *,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any] | None,
    fhir_server: str | None,
    fhir_authorization: Mapping[str, Any] | None,
    settings: FhirSettings,
    extra_resources: Sequence[Mapping[str, Any]] = (),
    client_factory: ClientFactory | None = None,
) -> Resolved:
    """Apply the decision table to every key; fetch what is missing; raise 412 if needed."""
    state = _receive(specs, prefetch or {})
    token, problem = _fhir_access(fhir_server, fhir_authorization, settings)
    factory = client_factory or FhirClient
    opened: list[FhirClient] = []

    def client() -> FhirClient | None:
        """The FHIR client of this call, opened on first use (None if it may not be used)."""
        if problem is not None:
            return None
        if not opened:
            opened.append(factory(str(fhir_server), token, settings))
        return opened[0]

    try:
        reader = client() if (state.missing or state.paged) else None
        if reader is not None:
            _fetch(reader, specs, context, state)
        else:
            _without_server(specs, state, str(problem or "no FHIR access"))
        _settle(specs, state)
        medications = _medications(
            state, extra_resources, fhir_server, client, settings.max_medication_reads, problem
        )
    finally:
        for opened_client in opened:
            opened_client.close()

    return Resolved(
        data=state.data,
        medications=medications,
        warnings=tuple(state.warnings),
        fetched=tuple(sorted(state.fetched)),
    )
