"""Fictional fixture patients offered by the sandbox page (read-only, loaded once).

Two sources under the fixtures folder (``fixtures/fhir``, shipped in the wheel too):

* ``patients/*.json`` — each patient's resources as a FHIR ``collection`` Bundle;
* ``scenarios/*.request.json`` — complete hook requests: the patient's resources are taken
  from ``prefetch`` and the scenario's ``draftOrders`` are offered as draft orders. These
  files are written as if today were ``SCENARIO_ANCHOR``; their dates are moved by whole
  days to the real today when served, as ``tests/scenarios`` does, so look-back windows
  ("obinutuzumab 7 days ago") mean the same on any day.

Everything here is fictional test data; nothing is written, nothing is fetched.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cds_server.shipped import shipped_path

log = logging.getLogger(__name__)

DEFAULT_FIXTURES_DIR = shipped_path("fixtures/fhir")  # in the wheel, else the checkout's
SCENARIO_ANCHOR = date(2026, 11, 21)  # the "today" of fixtures/fhir/scenarios (see its README)
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?=$|T)")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,100}$")


@dataclass(frozen=True)
class FixturePatient:
    """One patient the page can choose: its resources and, for scenarios, draft orders."""

    key: str  # "patients/<file stem>" or "scenarios/<scenario name>"
    group: str  # "patients" or "scenarios"
    name: str
    patient_id: str
    label: str
    description: str | None
    resources: tuple[Mapping[str, Any], ...]
    draft_orders: tuple[Mapping[str, Any], ...] = ()
    hook: str | None = None
    shift_dates: bool = False

    def listing(self) -> dict[str, Any]:
        """The entry shown in the patient picker (no resources)."""
        item: dict[str, Any] = {
            "key": self.key,
            "group": self.group,
            "label": self.label,
            "patientId": self.patient_id,
            "draftOrderCount": len(self.draft_orders),
        }
        if self.description:
            item["description"] = self.description
        if self.hook:
            item["hook"] = self.hook
        return item

    def detail(self, today: date) -> dict[str, Any]:
        """The patient's resources as a collection Bundle, plus the scenario's draft orders."""
        days = (today - SCENARIO_ANCHOR).days if self.shift_dates else 0
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": shift_dates(r, days)} for r in self.resources],
        }
        body: dict[str, Any] = {**self.listing(), "bundle": bundle}
        if self.draft_orders:
            body["draftOrders"] = [shift_dates(r, days) for r in self.draft_orders]
        if self.shift_dates:
            body["datesShiftedByDays"] = days
        return body


def shift_dates(value: Any, days: int) -> Any:
    """A copy of ``value`` with every FHIR date/dateTime string moved by ``days`` whole days."""
    if isinstance(value, dict):
        return {k: shift_dates(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, days) for v in value]
    if days and isinstance(value, str):
        match = _ISO_DATE.match(value)
        if match:
            try:
                moved = date(*(int(g) for g in match.groups())) + timedelta(days=days)
            except ValueError:
                return value
            return moved.isoformat() + value[10:]
    return value


def load_fixtures(folder: Path | str | None) -> MappingProxyType[str, FixturePatient]:
    """Every usable fixture patient under ``folder`` (missing folder → none), by key."""
    root = Path(folder) if folder else DEFAULT_FIXTURES_DIR
    found: dict[str, FixturePatient] = {}
    for path in sorted((root / "patients").glob("*.json")):
        patient = _from_patient_bundle(path)
        if patient is not None:
            found[patient.key] = patient
    for path in sorted((root / "scenarios").glob("*.request.json")):
        patient = _from_scenario(path)
        if patient is not None:
            found[patient.key] = patient
    return MappingProxyType(found)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("sandbox: fixture %s is not readable JSON; skipped", path.name)
        return None


def _resources(bundle: Any) -> list[dict[str, Any]]:
    if not isinstance(bundle, dict):
        return []
    if bundle.get("resourceType") != "Bundle":
        return [bundle] if bundle.get("resourceType") else []
    out = []
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType"):
            out.append(resource)
    return out


def _patient_label(resources: list[dict[str, Any]], fallback: str) -> tuple[str, str]:
    """(patient id, "Family, Given (F, 1957)") from the Patient resource, else the fallback."""
    for r in resources:
        if r.get("resourceType") == "Patient" and isinstance(r.get("id"), str):
            names = r.get("name") or [{}]
            name = names[0] if isinstance(names[0], dict) else {}
            given = " ".join(name.get("given") or ())
            who = ", ".join(p for p in (name.get("family"), given) if p) or r["id"]
            gender = (r.get("gender") or "?")[:1].upper()
            born = str(r.get("birthDate") or "?")[:4]
            return r["id"], f"{who} ({gender}, born {born})"
    return fallback, fallback


def _dedupe(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (str(r.get("resourceType")), str(r.get("id")))
        if r.get("id") is not None and key in seen:
            continue
        seen.add(key)
        out.append(r)
    return tuple(out)


def _from_patient_bundle(path: Path) -> FixturePatient | None:
    resources = _resources(_read(path))
    if not resources or not _NAME.match(path.stem):
        return None
    patient_id, who = _patient_label(resources, path.stem)
    return FixturePatient(
        key=f"patients/{path.stem}",
        group="patients",
        name=path.stem,
        patient_id=patient_id,
        label=f"{path.stem} — {who}",
        description=None,
        resources=_dedupe(resources),
    )


def _from_scenario(path: Path) -> FixturePatient | None:
    name = path.name.removesuffix(".request.json")
    body = _read(path)
    if not isinstance(body, dict) or not _NAME.match(name):
        return None
    context: dict[str, Any] = body["context"] if isinstance(body.get("context"), dict) else {}
    prefetch: dict[str, Any] = body["prefetch"] if isinstance(body.get("prefetch"), dict) else {}
    resources: list[dict[str, Any]] = []
    for value in prefetch.values():
        resources.extend(_resources(value))
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str):
        return None
    _, who = _patient_label(resources, patient_id)
    expected = _read(path.with_name(f"{name}.expected.json"))
    description = expected.get("description") if isinstance(expected, dict) else None
    drafts = [
        r for r in _resources(context.get("draftOrders")) if r.get("resourceType") != "Bundle"
    ]
    return FixturePatient(
        key=f"scenarios/{name}",
        group="scenarios",
        name=name,
        patient_id=patient_id,
        label=f"{name} — {who}",
        description=description if isinstance(description, str) else None,
        resources=_dedupe(resources),
        draft_orders=tuple(drafts),
        hook=body.get("hook") if isinstance(body.get("hook"), str) else None,
        shift_dates=True,
    )
