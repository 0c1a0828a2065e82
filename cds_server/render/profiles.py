"""Client profiles: what each kind of CDS client accepts, and how cards are shaped for it.

The web layer picks the profile of the calling client (its trusted-clients entry, else the
``CLIENT_PROFILE`` setting) and passes it down as plain data; rendering reads it here.

* ``generic`` — spec-pure CDS Hooks 2.0 (the default).
* ``epic`` — Epic's CDS Hooks tutorial (fhir.epic.com ``docId=cds-hooks``): one action per
  suggestion and ``selectionBehavior: any`` ("Suggestion Attributes", "Card Attributes");
  a suggested MedicationRequest/ServiceRequest takes none of our order details, so the
  dose, route and timing are written in ``action.description``, the part the clinician
  reads; RxNorm also under Epic's OID system, and the site's own preference-list or
  order-set codes where it mapped ours ("Codesets for Create APIs"). Epic lists create and
  delete actions only for medication and procedure orders ("HTTP Response Fields") and
  orders what a code names, so a rate change, a medication without RxNorm and a service
  request the site has not mapped are said on the card only, not suggested.
* ``oracle`` — Oracle Health (Cerner Millennium), from its draft CDS Hooks page: no
  ``appContext`` on links.
* ``sandbox`` — the official CDS Hooks Sandbox: its source needs nothing beyond ``generic``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from cds_server.model import (
    RXNORM,
    Coding,
    ProposedAction,
    ProposedMedication,
    ProposedRateChange,
)

ProfileName = Literal["generic", "epic", "oracle", "sandbox"]
PROFILE_NAMES: tuple[ProfileName, ...] = ("generic", "epic", "oracle", "sandbox")

# Epic's code systems for suggested orders ("Codesets for Create APIs"; its preference-list
# item system is ``model.EPIC_PREFERENCE_LIST_ITEM``, which site files also name).
RXNORM_OID = "urn:oid:2.16.840.1.113883.6.88"
EPIC_ORDER_SET_ITEM = "urn:com.epic.cdshooks.action.code.system.orderset-item"

# Epic fills a suggested order from its own medication record or preference list.
EPIC_ORDER_NOTE = (
    "The order opens with this site's default dose and timing: check them against this line."
)


def _no_codes() -> Mapping[str, tuple[Coding, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ClientProfile:
    """How cards are shaped for one kind of client (see the module docstring).

    ``order_codes``: the site's own codes for what we suggest ordering, keyed by agent id
    (``diphenhydramine``) or ``model.REFERRALS`` entry; sent (``epic`` only) as
    extra codings of the suggested resource.
    """

    name: ProfileName = "generic"
    order_codes: Mapping[str, tuple[Coding, ...]] = field(default_factory=_no_codes)

    def __post_init__(self) -> None:
        if self.name not in PROFILE_NAMES:
            raise ValueError(f"unknown client profile {self.name!r}")

    @property
    def epic(self) -> bool:
        return self.name == "epic"

    def takes(self, action: ProposedAction) -> bool:
        """Whether this client can carry out ``action`` as a suggestion.

        Epic: no ``update``; an order only with a code it can resolve — RxNorm for a
        medication, else the site's own code (a service request has no other). The card
        still says what to order.
        """
        if not self.epic:
            return True
        if isinstance(action, ProposedRateChange):
            return False
        if isinstance(action, ProposedMedication):
            rxnorm = action.coding is not None and action.coding.system == RXNORM
            return rxnorm or bool(self.order_codes.get(action.agent_id or ""))
        return bool(self.order_codes.get(action.referral or ""))

    def site_codings(self, key: str | None) -> list[dict[str, str]]:
        """The site's codings for ``key`` as FHIR Codings (``epic`` only; else none)."""
        if not self.epic or key is None:
            return []
        return [fhir_coding(c) for c in self.order_codes.get(key, ())]


GENERIC = ClientProfile()


def fhir_coding(c: Coding) -> dict[str, str]:
    """``c`` as a FHIR Coding (JSON), without its empty elements."""
    return {k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}


def shape_card(
    card: dict[str, Any], profile: ClientProfile, new_uuid: Callable[[], str]
) -> dict[str, Any]:
    """``card`` as ``profile``'s client accepts it (the card itself, changed in place)."""
    if profile.epic and card.get("suggestions"):
        card["suggestions"] = _one_action_each(card["suggestions"], new_uuid)
        card["selectionBehavior"] = "any"
    if profile.name == "oracle" and card.get("links"):
        card["links"] = [
            {k: v for k, v in link.items() if k != "appContext"} for link in card["links"]
        ]
    return card


def _one_action_each(
    suggestions: list[dict[str, Any]], new_uuid: Callable[[], str]
) -> list[dict[str, Any]]:
    """Epic takes one action per suggestion: a suggestion of several becomes several, each
    with its own uuid and its action's description as label."""
    out: list[dict[str, Any]] = []
    for s in suggestions:
        actions = s.get("actions") or []
        if len(actions) <= 1:
            out.append(s)
            continue
        for action in actions:
            label = action.get("description") or s.get("label")
            out.append({**s, "label": label, "uuid": new_uuid(), "actions": [action]})
    return out
