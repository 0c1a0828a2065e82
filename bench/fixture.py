"""Deterministic benchmark patient: a fictional recurrent ovarian cancer patient.

``python bench/fixture.py`` (re)writes ``bench/data/*.json``; ``tests/test_bench.py`` checks
that the committed files equal what this module generates. Everything is fictional (family
name ``Fictional-Benchmark``, ids ``bench-…``); codes are real so recognition works.

The patient (``pat-bench-ovc-01``, 64 y, 68 kg):

* first line 2025: six cycles of carboplatin + paclitaxel with full premedication
  (dexamethasone, diphenhydramine, famotidine) and ondansetron, then bevacizumab
  maintenance (a biosimilar given by ``medicationReference``, resolved by ``_include``);
* second line 2026: carboplatin + gemcitabine; a moderate carboplatin hypersensitivity
  reaction at cycle 3 (the 9th carboplatin exposure; the order was stopped);
* supportive and chronic medications — 60 MedicationRequests of history in all;
* five AllergyIntolerances: carboplatin (the reaction), penicillin, sulfonamides,
  iodinated contrast, latex;
* today's draft orders (order-sign): carboplatin, paclitaxel and bevacizumab infusions plus
  dexamethasone only — the H1 and H2 premedication of paclitaxel is missing, and carboplatin
  is ordered by standard infusion after a reaction.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
BASE = "https://ehr.example.org/fhir"
PATIENT_ID = "pat-bench-ovc-01"
USER = "Practitioner/prac-bench-onc-01"
TODAY = date(2026, 11, 21)
# The workload 3 request names the fake FHIR server; the runner replaces the port.
FAKE_FHIR_PLACEHOLDER = "http://127.0.0.1:0/fhir"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
IV = {
    "coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}],
    "text": "IV",
}
PO = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}], "text": "PO"}
SC = {
    "coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}],
    "text": "SC",
}
OUTPATIENT = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "code": "outpatient",
                "display": "Outpatient",
            }
        ]
    }
]

# name → (RxNorm code, display)
DRUGS: dict[str, tuple[str, str]] = {
    "carboplatin": ("40048", "carboplatin"),
    "paclitaxel": ("56946", "paclitaxel"),
    "bevacizumab": ("253337", "bevacizumab"),
    "gemcitabine": ("12574", "gemcitabine"),
    "dexamethasone": ("3264", "dexamethasone"),
    "diphenhydramine": ("3498", "diphenhydramine"),
    "famotidine": ("4278", "famotidine"),
    "ondansetron": ("26225", "ondansetron"),
    "pegfilgrastim": ("338036", "pegfilgrastim"),
    "olaparib": ("1597582", "olaparib"),
    "lorazepam": ("6470", "lorazepam"),
    "prochlorperazine": ("8704", "prochlorperazine"),
    "omeprazole": ("7646", "omeprazole"),
    "epinephrine": ("3992", "epinephrine"),
    "levothyroxine": ("10582", "levothyroxine"),
    "amlodipine": ("17767", "amlodipine"),
}


def _qty(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def medication_request(
    rid: str,
    drug: str,
    *,
    status: str,
    authored: date,
    text: str,
    route: dict[str, Any],
    dose: tuple[float, str] | None = None,
    rate: tuple[float, str] | None = None,
    volume_ml: float | None = None,
    medication_ref: str | None = None,
    intent: str = "order",
) -> dict[str, Any]:
    """One MedicationRequest in the shape EHRs send."""
    code, display = DRUGS[drug]
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": intent,
        "category": OUTPATIENT,
    }
    if medication_ref:
        res["medicationReference"] = {"reference": medication_ref}
    else:
        res["medicationCodeableConcept"] = {
            "coding": [{"system": RXNORM, "code": code, "display": display}],
            "text": text.split(" ")[0],
        }
    res |= {
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "authoredOn": authored.isoformat(),
        "requester": {"reference": USER},
    }
    dosage: dict[str, Any] = {"text": text, "route": route}
    dose_and_rate: dict[str, Any] = {}
    if dose:
        dose_and_rate["doseQuantity"] = _qty(*dose)
    if rate:
        dose_and_rate["rateQuantity"] = _qty(*rate)
    if dose_and_rate:
        dosage["doseAndRate"] = [dose_and_rate]
    res["dosageInstruction"] = [dosage]
    if volume_ml:
        res["dispenseRequest"] = {"quantity": _qty(volume_ml, "mL")}
    return res


def medications() -> list[dict[str, Any]]:
    """Medication resources referenced by the history (served through ``_include``)."""
    return [
        {
            "resourceType": "Medication",
            "id": "bench-med-mvasi-400",
            "code": {
                "coding": [{"system": RXNORM, "code": "1963693", "display": "bevacizumab-awwb"}],
                "text": "Mvasi (bevacizumab-awwb) 400 mg/16 mL",
            },
            "form": {"text": "injection solution"},
        },
        {
            "resourceType": "Medication",
            "id": "bench-med-gemcitabine-1g",
            "code": {
                "coding": [{"system": RXNORM, "code": "12574", "display": "gemcitabine"}],
                "text": "gemcitabine 1 g/26.3 mL",
            },
        },
    ]


def history() -> list[dict[str, Any]]:
    """Sixty MedicationRequests: two lines of chemotherapy, maintenance, supportive care."""
    out: list[dict[str, Any]] = []

    def add(rid: str, drug: str, **kw: Any) -> None:
        out.append(medication_request(f"bench-mr-{rid}", drug, **kw))

    first = date(2025, 1, 10)
    for c in range(6):  # first line: 6 × (carbo, pacli, dex, diphen, famo, ondansetron) = 36
        day = first + timedelta(days=21 * c)
        n = c + 1
        add(
            f"l1c{n}-carbo",
            "carboplatin",
            status="completed",
            authored=day,
            text=f"carboplatin AUC 5 (510 mg) in 250 mL D5W IV over 30 minutes, cycle {n}",
            route=IV,
            dose=(510, "mg"),
            volume_ml=250,
        )
        add(
            f"l1c{n}-pacli",
            "paclitaxel",
            status="completed",
            authored=day,
            text=f"paclitaxel 175 mg/m2 (300 mg) in 500 mL NS IV over 3 hours, cycle {n}",
            route=IV,
            dose=(300, "mg"),
            volume_ml=500,
        )
        add(
            f"l1c{n}-dex",
            "dexamethasone",
            status="completed",
            authored=day,
            text="dexamethasone 20 mg IV 30 minutes before paclitaxel",
            route=IV,
            dose=(20, "mg"),
        )
        add(
            f"l1c{n}-diph",
            "diphenhydramine",
            status="completed",
            authored=day,
            text="diphenhydramine 50 mg IV 30 minutes before paclitaxel",
            route=IV,
            dose=(50, "mg"),
        )
        add(
            f"l1c{n}-famo",
            "famotidine",
            status="completed",
            authored=day,
            text="famotidine 20 mg IV 30 minutes before paclitaxel",
            route=IV,
            dose=(20, "mg"),
        )
        add(
            f"l1c{n}-ond",
            "ondansetron",
            status="completed",
            authored=day,
            text="ondansetron 8 mg IV before chemotherapy",
            route=IV,
            dose=(8, "mg"),
        )
    maint = date(2025, 5, 23)
    for c in range(8):  # bevacizumab maintenance (biosimilar by reference) = 8
        day = maint + timedelta(days=21 * c)
        add(
            f"mt{c + 1}-bev",
            "bevacizumab",
            status="completed",
            authored=day,
            text="bevacizumab-awwb 15 mg/kg (1020 mg) in 100 mL NS IV over 30 minutes",
            route=IV,
            dose=(1020, "mg"),
            volume_ml=100,
            medication_ref="Medication/bench-med-mvasi-400",
        )
    second = date(2026, 8, 7)
    for c in range(3):  # second line: carboplatin + gemcitabine; reaction at cycle 3 = 6
        day = second + timedelta(days=21 * c)
        n = c + 1
        add(
            f"l2c{n}-carbo",
            "carboplatin",
            status="stopped" if n == 3 else "completed",
            authored=day,
            route=IV,
            dose=(450, "mg"),
            volume_ml=250,
            text=f"carboplatin AUC 4 (450 mg) in 250 mL D5W IV over 30 minutes, cycle {n}",
        )
        add(
            f"l2c{n}-gem",
            "gemcitabine",
            status="completed",
            authored=day,
            text="gemcitabine 1000 mg/m2 (1700 mg) IV over 30 minutes, day 1",
            route=IV,
            dose=(1700, "mg"),
            medication_ref="Medication/bench-med-gemcitabine-1g",
        )
    # supportive and chronic medications = 10
    add(
        "peg-1",
        "pegfilgrastim",
        status="completed",
        authored=date(2026, 8, 8),
        text="pegfilgrastim 6 mg SC once, day 2",
        route=SC,
        dose=(6, "mg"),
    )
    add(
        "peg-2",
        "pegfilgrastim",
        status="completed",
        authored=date(2026, 8, 29),
        text="pegfilgrastim 6 mg SC once, day 2",
        route=SC,
        dose=(6, "mg"),
    )
    add(
        "olaparib",
        "olaparib",
        status="stopped",
        authored=date(2025, 10, 2),
        text="olaparib 300 mg PO twice daily",
        route=PO,
        dose=(300, "mg"),
    )
    add(
        "ond-prn",
        "ondansetron",
        status="active",
        authored=date(2026, 8, 7),
        text="ondansetron 8 mg PO every 8 hours as needed for nausea",
        route=PO,
        dose=(8, "mg"),
    )
    add(
        "lorazepam",
        "lorazepam",
        status="active",
        authored=date(2026, 8, 7),
        text="lorazepam 0.5 mg PO at bedtime as needed",
        route=PO,
        dose=(0.5, "mg"),
    )
    add(
        "prochlorperazine",
        "prochlorperazine",
        status="active",
        authored=date(2026, 8, 7),
        text="prochlorperazine 10 mg PO every 6 hours as needed",
        route=PO,
        dose=(10, "mg"),
    )
    add(
        "omeprazole",
        "omeprazole",
        status="active",
        authored=date(2025, 1, 3),
        text="omeprazole 20 mg PO daily",
        route=PO,
        dose=(20, "mg"),
    )
    add(
        "epinephrine",
        "epinephrine",
        status="active",
        authored=date(2026, 9, 18),
        text="epinephrine 0.3 mg auto-injector IM as needed for anaphylaxis",
        route={"text": "IM"},
        dose=(0.3, "mg"),
    )
    add(
        "levothyroxine",
        "levothyroxine",
        status="active",
        authored=date(2024, 6, 1),
        text="levothyroxine 75 mcg PO daily",
        route=PO,
    )
    add(
        "amlodipine",
        "amlodipine",
        status="active",
        authored=date(2024, 6, 1),
        text="amlodipine 5 mg PO daily",
        route=PO,
        dose=(5, "mg"),
    )
    return out


def drafts(status: str = "draft") -> list[dict[str, Any]]:
    """Today's orders: three infusions and dexamethasone (H1 and H2 premedication missing)."""
    return [
        medication_request(
            "bench-mr-today-carbo",
            "carboplatin",
            status=status,
            authored=TODAY,
            route=IV,
            text="carboplatin AUC 4 (450 mg) in 250 mL D5W IV over 30 minutes, cycle 4",
            dose=(450, "mg"),
            rate=(500, "mL/h"),
            volume_ml=250,
        ),
        medication_request(
            "bench-mr-today-pacli",
            "paclitaxel",
            status=status,
            authored=TODAY,
            route=IV,
            text="paclitaxel 175 mg/m2 (300 mg) in 500 mL NS IV over 3 hours",
            dose=(300, "mg"),
            rate=(167, "mL/h"),
            volume_ml=500,
        ),
        medication_request(
            "bench-mr-today-bev",
            "bevacizumab",
            status=status,
            authored=TODAY,
            route=IV,
            text="bevacizumab 15 mg/kg (1020 mg) in 100 mL NS IV over 30 minutes",
            dose=(1020, "mg"),
            volume_ml=100,
        ),
        medication_request(
            "bench-mr-today-dex",
            "dexamethasone",
            status=status,
            authored=TODAY,
            route=IV,
            text="dexamethasone 20 mg IV 30 minutes before paclitaxel",
            dose=(20, "mg"),
        ),
    ]


def _allergy(
    rid: str,
    code: tuple[str, str, str],
    *,
    recorded: date,
    manifestation: tuple[str, str],
    severity: str,
    criticality: str,
    category: str = "medication",
) -> dict[str, Any]:
    system, value, display = code
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "confirmed",
                }
            ]
        },
        "type": "allergy",
        "category": [category],
        "criticality": criticality,
        "code": {
            "coding": [{"system": system, "code": value, "display": display}],
            "text": display,
        },
        "patient": {"reference": f"Patient/{PATIENT_ID}"},
        "recordedDate": recorded.isoformat(),
        "reaction": [
            {
                "manifestation": [
                    {
                        "coding": [
                            {
                                "system": SNOMED,
                                "code": manifestation[0],
                                "display": manifestation[1],
                            }
                        ],
                        "text": manifestation[1],
                    }
                ],
                "severity": severity,
            }
        ],
    }


def allergies() -> list[dict[str, Any]]:
    """Five AllergyIntolerances, the first one the prior carboplatin reaction."""
    return [
        _allergy(
            "bench-ai-carbo",
            (RXNORM, "40048", "carboplatin"),
            recorded=date(2026, 9, 18),
            manifestation=("271807003", "Eruption of skin"),
            severity="moderate",
            criticality="high",
        ),
        _allergy(
            "bench-ai-penicillin",
            (RXNORM, "70618", "penicillin"),
            recorded=date(1998, 5, 2),
            manifestation=("247472004", "Hives"),
            severity="mild",
            criticality="low",
        ),
        _allergy(
            "bench-ai-sulfa",
            (SNOMED, "387406002", "sulfonamide"),
            recorded=date(2004, 3, 14),
            manifestation=("271807003", "Eruption of skin"),
            severity="mild",
            criticality="low",
        ),
        _allergy(
            "bench-ai-contrast",
            (SNOMED, "293637006", "iodinated contrast media"),
            recorded=date(2019, 7, 9),
            manifestation=("418290006", "Itching"),
            severity="mild",
            criticality="low",
        ),
        _allergy(
            "bench-ai-latex",
            (SNOMED, "111088007", "latex"),
            recorded=date(2010, 1, 20),
            manifestation=("40275004", "Contact dermatitis"),
            severity="mild",
            criticality="low",
            category="environment",
        ),
    ]


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "identifier": [
            {"system": "urn:oid:2.16.840.1.113883.19.5.99999", "value": "MRN-BENCH-OVC-01"}
        ],
        "name": [{"use": "official", "family": "Fictional-Benchmark", "given": ["Robin"]}],
        "gender": "female",
        "birthDate": "1962-03-08",
    }


def weights() -> list[dict[str, Any]]:
    out = []
    for i, (day, kg) in enumerate(((date(2026, 8, 7), 70.1), (date(2026, 11, 20), 68.0))):
        out.append(
            {
                "resourceType": "Observation",
                "id": f"bench-obs-wt-{i + 1}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [
                        {"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}
                    ],
                    "text": "Body weight",
                },
                "subject": {"reference": f"Patient/{PATIENT_ID}"},
                "effectiveDateTime": f"{day.isoformat()}T09:30:00Z",
                "valueQuantity": _qty(kg, "kg"),
            }
        )
    return out


def _searchset(
    query: str, matches: list[dict[str, Any]], includes: list[dict[str, Any]] = ()
) -> dict[str, Any]:  # type: ignore[assignment]
    entries = [
        {
            "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": mode},
        }
        for mode, group in (("match", matches), ("include", list(includes)))
        for r in group
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(matches),
        "link": [{"relation": "self", "url": f"{BASE}/{query}"}],
        "entry": entries,
    }


def _prefetch(meds: list[dict[str, Any]]) -> dict[str, Any]:
    latest = sorted(weights(), key=lambda o: o["effectiveDateTime"], reverse=True)[:1]
    p = PATIENT_ID
    return {
        "patient": patient(),
        "medications": _searchset(f"MedicationRequest?patient={p}&_count=100", meds, medications()),
        "allergies": _searchset(f"AllergyIntolerance?patient={p}", allergies()),
        "weight": _searchset(
            f"Observation?patient={p}&code=http://loinc.org|29463-7&_sort=-date&_count=1", latest
        ),
    }


def _context(with_drafts: bool, encounter: str) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "userId": USER,
        "patientId": PATIENT_ID,
        "encounterId": encounter,
    }
    if with_drafts:
        ctx["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": f"{BASE}/MedicationRequest/{r['id']}", "resource": r} for r in drafts()
            ],
        }
    return ctx


def order_sign() -> dict[str, Any]:
    """Workload 1: order-sign with complete prefetch."""
    return {
        "hookInstance": "b3e1c7a0-0000-4000-8000-00000000be01",
        "hook": "order-sign",
        "context": _context(True, "bench-enc-ovc-01"),
        "prefetch": _prefetch(history()),
    }


def patient_view() -> dict[str, Any]:
    """Workload 2: patient-view the day after signing (today's orders are now active)."""
    return {
        "hookInstance": "b3e1c7a0-0000-4000-8000-00000000be02",
        "hook": "patient-view",
        "context": _context(False, "bench-enc-ovc-02"),
        "prefetch": _prefetch([*history(), *drafts("active")]),
    }


def order_sign_no_prefetch() -> dict[str, Any]:
    """Workload 3: order-sign without prefetch; the service fetches from the fake server."""
    return {
        "hookInstance": "b3e1c7a0-0000-4000-8000-00000000be03",
        "hook": "order-sign",
        "fhirServer": FAKE_FHIR_PLACEHOLDER,
        "fhirAuthorization": {
            "access_token": "bench-not-a-secret",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "infusion-safety-cds",
        },
        "context": _context(True, "bench-enc-ovc-03"),
    }


def fhir_store() -> dict[str, Any]:
    """Everything the fake FHIR server holds for the patient, as a collection Bundle."""
    resources = [patient(), *weights(), *history(), *medications(), *allergies()]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


FILES = {
    "order-sign.json": order_sign,
    "patient-view.json": patient_view,
    "order-sign-no-prefetch.json": order_sign_no_prefetch,
    "fhir-store.json": fhir_store,
}


def render(name: str) -> str:
    """The exact text of one data file."""
    return json.dumps(FILES[name](), indent=1, ensure_ascii=False) + "\n"


def write(folder: Path = DATA) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (folder / name).write_text(render(name), encoding="utf-8")


if __name__ == "__main__":
    write()
    print(f"wrote {', '.join(FILES)} to {DATA}")
