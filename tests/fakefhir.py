"""A tiny FHIR server on top of ``responses``, serving the resources of a fixture Bundle.

Supports what the service asks for: ``Type/id`` reads, and ``Type?patient=…`` searches
(MedicationAdministration included) with ``_include=MedicationRequest:medication`` or
``_include=MedicationAdministration:medication``, ``code`` (token), ``_sort=-date`` and ``_count``
(the search is the benchmark fake's, ``bench.fakefhir.search``).
Every request is recorded in ``calls`` (path, query, headers) for assertions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses

from bench.fakefhir import search


@dataclass
class Call:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def tail(self) -> str:
        return self.path.split("/fhir/", 1)[-1]


@dataclass
class FakeFhir:
    base: str
    resources: list[dict[str, Any]]
    calls: list[Call] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # resource type -> HTTP status

    @classmethod
    def from_bundle(cls, base: str, bundle: dict[str, Any]) -> FakeFhir:
        return cls(base, [e["resource"] for e in bundle.get("entry", [])])

    def register(self, rsps: responses.RequestsMock) -> FakeFhir:
        rsps.add_callback(
            responses.GET, re.compile(re.escape(self.base) + r"/.*"), callback=self._handle
        )
        return self

    def types_called(self) -> list[str]:
        return [c.tail.split("?")[0].split("/")[0] for c in self.calls]

    def _handle(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        query = parse_qs(parts.query)
        self.calls.append(Call(parts.path, query, dict(request.headers)))
        tail = parts.path[len(urlsplit(self.base).path) :].strip("/")
        rtype = tail.split("/")[0]
        if rtype in self.fail:
            return self.fail[rtype], {}, json.dumps({"resourceType": "OperationOutcome"})
        if "/" in tail:
            rid = tail.split("/", 1)[1]
            for res in self.resources:
                if res["resourceType"] == rtype and res.get("id") == rid:
                    return 200, {"Content-Type": "application/fhir+json"}, json.dumps(res)
            return 404, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        bundle = search(self.resources, rtype, query)
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(bundle)
