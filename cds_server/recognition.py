"""Recognises knowledge-base drugs in medication orders and allergy records (codes, names, text)."""

from __future__ import annotations

from collections.abc import Iterable

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Allergy, MedicationOrder, RecognisedAllergy, RecognisedOrder


def recognise_orders(
    orders: Iterable[MedicationOrder], kb: KnowledgeBase
) -> tuple[RecognisedOrder, ...]:
    """Every order that is a knowledge-base drug, with how it was matched."""
    raise NotImplementedError  # implemented by the recognition work (issue 3)


def recognise_allergies(
    allergies: Iterable[Allergy], kb: KnowledgeBase
) -> tuple[RecognisedAllergy, ...]:
    """Every allergy record that names a knowledge-base drug or drug class."""
    raise NotImplementedError  # implemented by the recognition work (issue 3)
