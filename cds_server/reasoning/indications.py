"""Whether a fact restricted to indications (``applies.indications``) holds for an order.

The order's indication is what it names itself (``MedicationOrder.reasons``: its
``reasonCode`` and the Conditions its ``reasonReference`` names). An ICD-10-CM code matches
an indication when it is one of the indication's codes or falls under one of its categories
(``C83.30`` under ``C83.3``); a SNOMED CT concept matches only when it is one of its concepts
(subsumption needs a terminology server). Only ICD-10-CM can tell that an order is for
something else: a SNOMED concept that matches none may still be a narrower concept of one.
Codes that say why a patient is seen rather than what is treated (``not_indications`` of
``cards/policy.yaml``: ICD-10-CM chapter Z) are set aside, as are codes that are not
well-formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cds_server.knowledge.model import CardPolicy, Indication
from cds_server.model import ICD10CM, ICD10CM_OID, SNOMED, SNOMED_OID, MedicationOrder

_ICD10CM_SYSTEMS = frozenset({ICD10CM, ICD10CM_OID})
_SNOMED_SYSTEMS = frozenset({SNOMED, SNOMED_OID})
# An ICD-10-CM code once its dot is removed (3 to 7 characters).
_ICD10CM_SHAPE = re.compile(r"^[A-Z][0-9][0-9A-Z]{1,5}$")
_SNOMED_SHAPE = re.compile(r"^[1-9][0-9]{5,17}$")


def _icd(code: str) -> str:
    """An ICD-10-CM code in the form compared: upper case, without its dot or spaces."""
    return code.strip().upper().replace(".", "")


@dataclass(frozen=True)
class OrderIndication:
    """The codes an order names as its indication, in the forms compared."""

    icd10cm: tuple[str, ...] = ()
    snomed: frozenset[str] = frozenset()


NONE = OrderIndication()


def of_order(order: MedicationOrder, policy: CardPolicy) -> OrderIndication:
    """The order's indication codes (ill-formed codes and ``not_indications`` left out)."""
    if not order.reasons:
        return NONE
    ignored = tuple(_icd(c.code) for c in policy.not_indications)
    icd: list[str] = []
    snomed: set[str] = set()
    for coding in order.reasons:
        code = coding.code.strip() if isinstance(coding.code, str) else ""
        if coding.system in _ICD10CM_SYSTEMS:
            norm = _icd(code)
            if _ICD10CM_SHAPE.match(norm) and not norm.startswith(ignored):
                icd.append(norm)
        elif coding.system in _SNOMED_SYSTEMS and _SNOMED_SHAPE.match(code):
            snomed.add(code)
    return OrderIndication(tuple(dict.fromkeys(icd)), frozenset(snomed))


def _state(indication: Indication, order: OrderIndication) -> bool | None:
    """True: the order names this indication; False: it names a diagnosis in ICD-10-CM that
    is not this one; None: it cannot be told."""
    prefixes = tuple(_icd(c.code) for c in indication.codes if c.system == "icd-10-cm")
    if any(code.startswith(prefixes) for code in order.icd10cm):
        return True
    if any(c.system == "snomed" and c.code in order.snomed for c in indication.codes):
        return True
    return False if prefixes and order.icd10cm else None


def holds(indications: tuple[Indication, ...], order: OrderIndication | None) -> bool | None:
    """Does the order's indication match one of ``indications``? None when it cannot be told
    (the order names none, or none in a form that can rule one out)."""
    if order is None:
        return None
    states = [_state(indication, order) for indication in indications]
    if True in states:
        return True
    if states and all(state is False for state in states):
        return False
    return None
