"""The log scanner used by the fuzz, property, failure-injection and soak runs finds leaks."""

from __future__ import annotations

import jwt

from tests.loghygiene import fixture_secrets, leaks


def test_fixture_secrets_cover_ids_and_names() -> None:
    secrets = fixture_secrets()
    assert {"pat-lym-001", "Fictional-Testperson", "Avery"} <= secrets
    assert "Max" not in secrets  # short given names are ordinary words, not scanned


def test_leaks_are_found() -> None:
    token = jwt.encode({"iss": "x", "jti": "1"}, "k" * 32, algorithm="HS256")
    text = f"call patient=pat-lym-001 Authorization: Bearer {token} family=Fictional-Testperson"
    found = leaks(text, ("tok-SECRET",))
    assert found == {"pat-lym-001": 1, "Fictional-Testperson": 1, "<JWT-shaped string>": 1}
    assert leaks("a tok-SECRET b", ("tok-SECRET",)) == {"tok-SECRET": 1}


def test_clean_log_lines_pass() -> None:
    text = (
        "call service=infusion-safety hook=order-sign hookInstance=7a1f3c52 cards=2 "
        "fetched=medications warnings=0 ms=12\nrejected POST /cds-services/<service_id>: 400"
    )
    assert leaks(text, ("tok-SECRET",)) == {}
