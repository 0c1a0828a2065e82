"""Prefetch token substitution: only 2.0 tokens, values percent-encoded, unknown tokens rejected."""

from __future__ import annotations

import pytest

from cds_server.cdshooks.errors import TemplateError
from cds_server.fhirdata import templates

CTX = {"patientId": "p-1", "userId": "PractitionerRole/r.9", "encounterId": "e1"}
FIELDS = {"userId", "patientId", "encounterId"}


def test_render_context_tokens() -> None:
    assert templates.render("Patient/{{context.patientId}}", CTX) == "Patient/p-1"
    assert templates.render("X?patient={{ context.patientId }}&e={{context.encounterId}}", CTX) == (
        "X?patient=p-1&e=e1"
    )


def test_user_tokens() -> None:
    assert templates.render("PractitionerRole/{{userPractitionerRoleId}}", CTX) == (
        "PractitionerRole/r.9"
    )
    with pytest.raises(TemplateError, match="not a Practitioner"):
        templates.render("Practitioner/{{userPractitionerId}}", CTX)


def test_values_are_percent_encoded() -> None:
    assert templates.render("X?patient={{context.patientId}}", {"patientId": "a&b=c/d"}) == (
        "X?patient=a%26b%3Dc%2Fd"
    )


@pytest.mark.parametrize(
    "template",
    [
        "X?p={{context.draftOrders.entry.resource.id}}",
        "X?p={{today()}}",
        "X?p={{Patient.id}}",
        "X?p={{context.missing}}",
        "X?p={{context.selections}}",
    ],
)
def test_unknown_or_unfillable_tokens_are_rejected(template: str) -> None:
    ctx = {**CTX, "selections": ["MedicationRequest/1"]}
    with pytest.raises(TemplateError):
        templates.render(template, ctx)


def test_problems_reports_invalid_2_0_tokens() -> None:
    assert templates.problems("Patient/{{context.patientId}}", FIELDS) == []
    assert templates.problems("P?x={{userPractitionerId}}", FIELDS) == []
    assert templates.problems("X?p={{context.draftOrders}}", FIELDS)
    assert templates.problems("X?p={{context.draftOrders.MedicationRequest.id}}", FIELDS)
    assert templates.problems("X?p={{today() - 90 days}}", FIELDS)
    assert templates.problems("X?p={{context.patientId}", FIELDS)
