"""Builders of plain model objects for rule tests (no FHIR, no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_server.model import (
    RXNORM,
    SNOMED,
    Allergy,
    Coding,
    HookCall,
    MedicationOrder,
    PatientRecord,
    Quantity,
    Reaction,
    RecognisedAllergy,
    RecognisedOrder,
    Situation,
    Weight,
)

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def order(
    ref: str,
    *,
    dose: float | None = None,
    unit: str = "mg",
    rate: float | None = None,
    rate_unit: str = "mg/h",
    volume: float | None = None,
    status: str = "draft",
    when: datetime = NOW,
    text: str = "",
    draft: bool | None = None,
    selected: bool = True,
    repeat_days: float | None = None,
) -> MedicationOrder:
    resource = {
        "resourceType": "MedicationRequest",
        "id": ref.split("/")[-1],
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": text or "drug"},
        "dosageInstruction": [
            {
                "doseAndRate": [
                    {
                        **({"doseQuantity": {"value": dose, "unit": unit}} if dose else {}),
                        **({"rateQuantity": {"value": rate, "unit": rate_unit}} if rate else {}),
                    }
                ],
                **(
                    {
                        "timing": {
                            "repeat": {"frequency": 1, "period": repeat_days, "periodUnit": "d"}
                        }
                    }
                    if repeat_days
                    else {}
                ),
            }
        ],
    }
    return MedicationOrder(
        ref=ref,
        status=status,
        intent="order",
        texts=(text,) if text else (),
        dose=Quantity(dose, unit) if dose is not None else None,
        rate=Quantity(rate, rate_unit) if rate is not None else None,
        volume=Quantity(volume, "mL") if volume is not None else None,
        authored_on=when,
        is_draft=(status == "draft") if draft is None else draft,
        selected=selected,
        repeat_days=repeat_days,
        resource=resource,
    )


def given(
    drug_id: str,
    n: int,
    *,
    dose: float | None = None,
    unit: str = "mg",
    start_days_ago: float = 200,
    every_days: float = 21,
) -> list[RecognisedOrder]:
    """``n`` completed administrations of a drug in the history, oldest first."""
    return [
        RecognisedOrder(
            order(
                f"MedicationRequest/{drug_id}-h{i}",
                dose=dose,
                unit=unit,
                status="completed",
                when=days_ago(start_days_ago - i * every_days),
            ),
            drug_id,
            "test",
        )
        for i in range(n)
    ]


def allergy(
    target_id: str,
    *,
    kind: str = "drug",
    text: str | None = None,
    criticality: str | None = None,
    severity: str | None = None,
    anaphylaxis: bool = False,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    recorded: datetime | None = None,
) -> RecognisedAllergy:
    manifestations = (Coding(SNOMED, "39579001", "Anaphylaxis"),) if anaphylaxis else ()
    reaction = Reaction(
        manifestations=manifestations,
        manifestation_texts=("Anaphylaxis",) if anaphylaxis else ("Urticaria",),
        severity=severity,
    )
    return RecognisedAllergy(
        Allergy(
            ref="AllergyIntolerance/a1",
            clinical_status=clinical,
            verification_status=verification,
            criticality=criticality,
            codings=(Coding(RXNORM, "0", target_id),),
            texts=(text or target_id,),
            reactions=(reaction,),
            recorded=recorded or days_ago(120),
        ),
        kind,  # type: ignore[arg-type]
        target_id,
        "test",
    )


def situation(
    drafts: list[tuple[str, MedicationOrder]] | None = None,
    *,
    history: list[RecognisedOrder] | None = None,
    allergies: list[RecognisedAllergy] | None = None,
    agents: list[tuple[MedicationOrder, str]] | None = None,
    weight_kg: float | None = None,
    hook: str = "order-sign",
    history_known: bool = True,
) -> Situation:
    orders = tuple(RecognisedOrder(o, d, "test") for d, o in (drafts or []))
    hist = tuple(history or [])
    record = PatientRecord(
        patient_id="p1",
        weight=Weight(weight_kg, days_ago(3)) if weight_kg is not None else None,
        draft_orders=tuple(o for _, o in (drafts or []))
        + tuple(o for o, _ in (agents or []) if o.is_draft),
        medication_history=tuple(r.order for r in hist),
        history_known=history_known,
    )
    call = HookCall(hook, "infusion-safety", "hook-1", "p1", now=NOW)
    return Situation(
        call=call,
        record=record,
        orders=orders,
        history=hist,
        allergies=tuple(allergies or []),
        now=NOW,
        agents=tuple(agents or []),
    )
