"""The knowledge base's drugs as a picker list for the sandbox's order builder.

Read-only and free of patient data: ids, names, brands, the coding a draft order should
carry, the route, the rate units the drug's schedules use, and its step-up doses (so a
tester can build a step-up order without looking them up). No rule is evaluated here.
"""

from __future__ import annotations

from typing import Any

from cds_server.knowledge.model import Drug, KnowledgeBase
from cds_server.model import ATC, RXNORM

# Preferred code for a draft order: an RxNorm ingredient, else any RxNorm code without a
# product term type, else ATC; otherwise the order is sent by name only.
_INGREDIENT_TTYS = frozenset({"IN", "MIN", "PIN"})
# Units a tester may pick for a dose (UCUM codes); rate units come from the knowledge.
DOSE_UNITS: tuple[str, ...] = ("mg", "mg/kg", "mg/m2", "ug", "ug/kg", "g", "U", "U/m2", "mL")
ROUTES: tuple[str, ...] = ("intravenous", "subcutaneous")


def _coding(drug: Drug) -> dict[str, str] | None:
    entries = drug.identity.codes
    ranked = (
        [e for e in entries if e.coding.system == RXNORM and (e.tty or "") in _INGREDIENT_TTYS],
        [e for e in entries if e.coding.system == RXNORM and not e.tty],
        [e for e in entries if e.coding.system == ATC],
    )
    for group in ranked:
        for entry in group:
            if entry.coding.code:
                return {
                    "system": entry.coding.system or "",
                    "code": entry.coding.code,
                    "display": entry.coding.display or drug.name,
                }
    return None


def _rate_units(drug: Drug) -> list[str]:
    units: set[str] = set()
    for schedule in drug.rate_schedules:
        for q in (schedule.start, schedule.increment, schedule.max, *schedule.steps):
            if q is not None:
                units.add(q.unit)
    return sorted(units)


def drug_entry(drug: Drug) -> dict[str, Any]:
    """One drug of the picker list."""
    entry: dict[str, Any] = {
        "id": drug.id,
        "name": drug.name,
        "display": drug.display,
        "brands": list(drug.identity.brands),
        "rateUnits": _rate_units(drug),
        "steps": [
            {
                "schedule": schedule.label,
                "label": step.label,
                "dose": {"value": step.dose.value, "unit": step.dose.unit},
                **({"day": step.day} if step.day else {}),
            }
            for schedule in drug.step_up
            for step in schedule.steps
        ],
    }
    coding = _coding(drug)
    if coding:
        entry["coding"] = coding
    if drug.drug_class:
        entry["drugClass"] = drug.drug_class
    if drug.route:
        entry["route"] = drug.route
    return entry


def catalogue(kb: KnowledgeBase) -> dict[str, Any]:
    """Every drug, sorted by display name, and the unit lists the builder offers."""
    drugs = sorted((drug_entry(d) for d in kb.drugs.values()), key=lambda d: d["display"].lower())
    rate_units = sorted({u for d in drugs for u in d["rateUnits"]} | {"mL/h"})
    return {
        "knowledgeVersion": kb.version,
        "drugs": drugs,
        "doseUnits": list(DOSE_UNITS),
        "rateUnits": rate_units,
        "routes": list(ROUTES),
    }
