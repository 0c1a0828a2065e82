"""Recognises knowledge-base drugs, agents and classes in orders and allergy records.

How an order is matched, in this order (the first stage that finds something wins):

1. **Codes.** RxNorm codings of the order, then RxNorm codings of the Medication's
   ingredients, then ATC, SNOMED CT and NDC the same way. Systems are compared by URI and
   codes exactly, except NDCs: every form EHRs send (10-digit hyphenated, 11-digit with or
   without hyphens, product NDC; system URI or HL7 OID) is reduced to its product NDC
   (``ndc_product``), so a knowledge-base product NDC matches any package of the product.
2. **Names in text.** ``medicationCodeableConcept.text``, coding displays, the Medication's
   code and ingredient texts and ``medicationReference.display`` are searched for every
   ingredient name, synonym, brand and biosimilar name of the knowledge base. Matching is
   case-insensitive (Tall-Man "riTUXimab" is "rituximab") and token-based: punctuation,
   hyphens and slashes separate tokens and "and" is ignored, so "rituximab-abbs" contains
   the token "rituximab" and "rituximab/hyaluronidase" equals "rituximab and hyaluronidase".
   A text equal to a name beats a name found inside a longer text, and the longest name
   (in tokens, then characters) wins, so "Rituxan Hycela" beats "Rituxan".

A drug's ``exclude_terms`` veto it in both stages: an order whose text contains one of them
is never that drug, even when its code matches (paclitaxel RxNorm with "protein-bound" in
the text is not solvent-based paclitaxel). Look-alike products are told apart by the
knowledge, never by code here. ``matched_by`` records how each match was made:
``rxnorm:121191``, ``ingredient-rxnorm:121191``, ``brand:Truxima``,
``biosimilar:rituximab-abbs`` or ``text:glofitamab``.

Orders yield at most one drug (the best match); allergy records yield every drug or class
they name (a record may list several substances). Agents (premedication and rescue drugs)
are recognised separately and never count as drugs or allergy targets. Nothing here
filters by status: the rules decide what an inactive order or a refuted allergy means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from cds_server.knowledge.model import Identity, KnowledgeBase
from cds_server.model import (
    ATC,
    NDC,
    RXNORM,
    SNOMED,
    Allergy,
    Coding,
    MedicationOrder,
    MedicineKind,
    RecognisedAllergy,
    RecognisedOrder,
)

__all__ = [
    "NDC_SYSTEMS",
    "Match",
    "Recogniser",
    "ambiguous_names",
    "code_key",
    "ndc_product",
    "normalise",
    "recognise_agents",
    "recognise_allergies",
    "recognise_orders",
    "recogniser_for",
]

TargetKind = Literal["drug", "agent", "class"]

# Code systems in the order they are tried, with the short name used in ``matched_by``.
_SYSTEMS: tuple[tuple[str, str], ...] = (
    (RXNORM, "rxnorm"),
    (ATC, "atc"),
    (SNOMED, "snomed"),
    (NDC, "ndc"),
)
# The NDC system as FHIR names it, and its HL7 OID (some EHRs send that).
NDC_SYSTEMS = frozenset({NDC, "urn:oid:2.16.840.1.113883.6.69"})
_NDC_SEGMENTS = re.compile(r"^([0-9]{4,5})-([0-9]{3,4})(?:-([0-9]{1,2}))?$")
# Hyphenated lengths an NDC may have: 10-digit packages (4-4-2, 5-3-2, 5-4-1), the 11-digit
# 5-4-2 form, and product NDCs (labeler-product: 4-4, 5-3, 5-4).
_NDC_SHAPES = frozenset({(4, 4, 2), (5, 3, 2), (5, 4, 1), (5, 4, 2), (4, 4), (5, 3), (5, 4)})
_SEPARATORS = re.compile(r"[\W_]+")
_IGNORED_TOKENS = frozenset({"and"})


def ndc_product(code: str) -> str | None:
    """The product NDC (labeler-product, canonical 5-4 with a hyphen) of a package or product
    NDC as EHRs send it, else None.

    Accepted: hyphenated 10-digit package NDCs (4-4-2, 5-3-2, 5-4-1), 11-digit 5-4-2 with or
    without hyphens, and product NDCs (4-4, 5-3, 5-4). Segments are zero-padded to 5-4(-2).
    Ten or nine digits without hyphens are ambiguous (which segment was padded?): None.
    """
    text = code.strip()
    if len(text) == 11 and text.isascii() and text.isdigit():
        return f"{text[:5]}-{text[5:9]}"
    match = _NDC_SEGMENTS.match(text)
    if match is None:
        return None
    labeler, product, package = match.groups()
    shape = tuple(len(g) for g in (labeler, product, package) if g is not None)
    if shape not in _NDC_SHAPES:
        return None
    return f"{labeler.zfill(5)}-{product.zfill(4)}"


def code_key(system: str | None, code: str | None) -> tuple[str, str] | None:
    """How a coding is looked up: (system, code) as sent; NDCs by their product NDC."""
    if not system or not code:
        return None
    if system in NDC_SYSTEMS:
        product = ndc_product(code)
        return (NDC, product) if product else None
    return system, code


def normalise(text: str) -> tuple[str, ...]:
    """Text as matching sees it: case-folded tokens, punctuation dropped, "and" ignored."""
    return tuple(t for t in _SEPARATORS.split(text.casefold()) if t and t not in _IGNORED_TOKENS)


def _normalised(raw_texts: Iterable[str]) -> list[tuple[str, ...]]:
    """The non-empty texts, normalised, dropping those that normalise to nothing."""
    return [t for t in (normalise(x) for x in raw_texts if x) if t]


def _find(tokens: Sequence[str], phrase: Sequence[str]) -> int:
    """Index of the first occurrence of ``phrase`` as whole tokens in ``tokens``, or -1."""
    n = len(phrase)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + n]) == tuple(phrase):
            return i
    return -1


@dataclass(frozen=True)
class _Phrase:
    """A name of a target as matching sees it."""

    tokens: tuple[str, ...]
    kind: TargetKind
    target: str
    label: str


@dataclass(frozen=True)
class Match:
    """One target found in an order or allergy record, and how it was found."""

    kind: TargetKind
    target: str
    matched_by: str


@dataclass(frozen=True)
class _Hit:
    """A phrase found in one of the texts of a record."""

    phrase: _Phrase
    text_index: int
    start: int
    exact: bool

    @property
    def end(self) -> int:
        return self.start + len(self.phrase.tokens)

    def sort_key(self) -> tuple[int, int, int, int, int]:
        """Best first: whole-text match, more tokens, more characters, earlier text, earlier."""
        chars = sum(len(t) for t in self.phrase.tokens)
        return (
            0 if self.exact else 1,
            -len(self.phrase.tokens),
            -chars,
            self.text_index,
            self.start,
        )

    def inside(self, other: _Hit) -> bool:
        """True when this hit lies within ``other``'s span of the same text and is shorter."""
        return (
            self.text_index == other.text_index
            and other.start <= self.start
            and self.end <= other.end
            and len(self.phrase.tokens) < len(other.phrase.tokens)
        )


def _identity_phrases(kind: TargetKind, target: str, name: str, ident: Identity) -> list[_Phrase]:
    phrases: list[_Phrase] = []

    def add(text: str, label: str) -> None:
        tokens = normalise(text)
        if tokens:
            phrases.append(_Phrase(tokens, kind, target, label))

    for n in (name, *ident.names):
        add(n, f"text:{n.lower()}")
    for brand in ident.brands:
        add(brand, f"brand:{brand}")
    for bio_name, bio_brand in ident.biosimilars:
        add(bio_name, f"biosimilar:{bio_name}")
        if bio_brand:
            add(bio_brand, f"brand:{bio_brand}")
    return phrases


# Orders whose codes and texts (with the route) fit in this many characters are remembered:
# the same products recur in every patient's history, and matching is a pure function of them.
MEMO_TEXT_CHARS = 512
MEMO_ENTRIES = 4096


def _order_key(order: MedicationOrder) -> tuple[Any, ...]:
    """What ``match_order`` reads from an order (``match_agents``: all but the route)."""
    return (order.codings, order.ingredient_codings, order.texts, order.route)


def _fits_memo(key: tuple[Any, ...]) -> bool:
    """An ``_order_key`` small enough to keep in the memo (``MEMO_TEXT_CHARS`` of codes,
    texts and route)."""
    codings, ingredient_codings, texts, route = key
    size = sum(map(len, texts)) + len(route or "")
    size += sum(
        len(c.code or "") + len(c.system or "") + len(c.display or "")
        for c in (*codings, *ingredient_codings)
    )
    return size <= MEMO_TEXT_CHARS


class Recogniser:
    """Code and name indexes over one knowledge base; build once, use for every request.

    Order matching is memoised (bounded LRU per recogniser, small orders only): it depends
    only on the order's codes, texts and route and on this knowledge base.
    """

    def __init__(self, kb: KnowledgeBase):
        self._order_memo = lru_cache(maxsize=MEMO_ENTRIES)(self._match_order_key)
        self._agent_memo = lru_cache(maxsize=MEMO_ENTRIES)(self._match_agents_key)
        self.version = kb.version
        self._codes: dict[TargetKind, dict[tuple[str, str], str]] = {
            "drug": {},
            "agent": {},
            "class": {},
        }
        self._phrases: dict[TargetKind, tuple[_Phrase, ...]] = {}
        self._excludes: dict[tuple[TargetKind, str], tuple[tuple[str, ...], ...]] = {}
        self._routes: dict[str, tuple[str, ...]] = {
            d.id: d.identity.exclude_routes for d in kb.drugs.values()
        }
        groups: tuple[tuple[TargetKind, Iterable[tuple[str, str, Identity]]], ...] = (
            ("drug", ((d.id, d.name, d.identity) for d in kb.drugs.values())),
            ("agent", ((a.id, a.name, a.identity) for a in kb.agents.values())),
            ("class", ((c.id, c.name, c.identity) for c in kb.classes.values())),
        )
        for kind, members in groups:
            phrases: list[_Phrase] = []
            for target, name, ident in sorted(members, key=lambda m: m[0]):
                for entry in ident.codes:
                    key = code_key(entry.coding.system, entry.coding.code)
                    if key is not None:
                        self._codes[kind].setdefault(key, target)
                phrases.extend(_identity_phrases(kind, target, name, ident))
                self._excludes[(kind, target)] = tuple(
                    t for t in (normalise(x) for x in ident.exclude_terms) if t
                )
            self._phrases[kind] = tuple(phrases)
        # Phrases by their first token, with their position in ``_phrases`` (for ordering).
        self._by_first: dict[TargetKind, dict[str, tuple[tuple[int, _Phrase], ...]]] = {}
        for kind, kind_phrases in self._phrases.items():
            first: dict[str, list[tuple[int, _Phrase]]] = {}
            for n, phrase in enumerate(kind_phrases):
                first.setdefault(phrase.tokens[0], []).append((n, phrase))
            self._by_first[kind] = {token: tuple(group) for token, group in first.items()}

    # ---- building blocks -------------------------------------------------------------

    def _vetoed(self, kind: TargetKind, target: str, texts: Sequence[tuple[str, ...]]) -> bool:
        """True when any text contains one of the target's exclude terms."""
        return any(
            _find(tokens, term) >= 0
            for term in self._excludes.get((kind, target), ())
            for tokens in texts
        )

    def _code_matches(
        self,
        kind: TargetKind,
        codings: Sequence[Coding],
        ingredient_codings: Sequence[Coding],
        texts: Sequence[tuple[str, ...]],
    ) -> list[Match]:
        """Every non-vetoed code match, best first (system order, own codes before ingredients)."""
        out: list[Match] = []
        index = self._codes[kind]
        for system, short in _SYSTEMS:
            for prefix, group in (("", codings), ("ingredient-", ingredient_codings)):
                for c in group:
                    if not c.code or (
                        c.system != system and not (system == NDC and c.system in NDC_SYSTEMS)
                    ):
                        continue
                    key = code_key(c.system, c.code)
                    target = index.get(key) if key is not None else None
                    if target is not None and not self._vetoed(kind, target, texts):
                        out.append(Match(kind, target, f"{prefix}{short}:{c.code}"))
        return out

    def _text_hits(
        self, kinds: Sequence[TargetKind], texts: Sequence[tuple[str, ...]]
    ) -> list[_Hit]:
        """Non-vetoed name hits, best first, without hits lying inside a longer hit.

        Each phrase's first occurrence in each text, found through the first-token index
        and collected in (kind, phrase, text) order so that ties sort as they always have.
        """
        found: dict[tuple[int, int, int], _Hit] = {}
        vetoed: dict[tuple[TargetKind, str], bool] = {}
        for k, kind in enumerate(kinds):
            by_first = self._by_first[kind]
            for i, tokens in enumerate(texts):
                for start, token in enumerate(tokens):
                    for n, phrase in by_first.get(token, ()):
                        if (k, n, i) in found:
                            continue
                        if tokens[start : start + len(phrase.tokens)] != phrase.tokens:
                            continue
                        key = (kind, phrase.target)
                        if key not in vetoed:
                            vetoed[key] = self._vetoed(kind, phrase.target, texts)
                        if not vetoed[key]:
                            found[(k, n, i)] = _Hit(phrase, i, start, tokens == phrase.tokens)
        hits = [found[key] for key in sorted(found)]
        if len(hits) < 2:
            return hits
        kept = [h for h in hits if not any(h.inside(o) for o in hits)]
        return sorted(kept, key=_Hit.sort_key)

    def _all_matches(
        self,
        kinds: Sequence[TargetKind],
        codings: Sequence[Coding],
        ingredient_codings: Sequence[Coding],
        raw_texts: Sequence[str],
    ) -> list[Match]:
        """Code matches, then text matches, each target once, best first."""
        return self._matches_in(kinds, codings, ingredient_codings, _normalised(raw_texts))

    def _matches_in(
        self,
        kinds: Sequence[TargetKind],
        codings: Sequence[Coding],
        ingredient_codings: Sequence[Coding],
        texts: Sequence[tuple[str, ...]],
    ) -> list[Match]:
        """``_all_matches`` over texts already normalised."""
        found: list[Match] = []
        for kind in kinds:
            found.extend(self._code_matches(kind, codings, ingredient_codings, texts))
        found.extend(
            Match(h.phrase.kind, h.phrase.target, h.phrase.label)
            for h in self._text_hits(kinds, texts)
        )
        seen: set[tuple[str, str]] = set()
        unique: list[Match] = []
        for m in found:
            if (m.kind, m.target) not in seen:
                seen.add((m.kind, m.target))
                unique.append(m)
        return unique

    # ---- public API --------------------------------------------------------------------

    def match_order(self, order: MedicationOrder) -> Match | None:
        """The knowledge-base drug an order is for, or None.

        A drug whose ``exclude_routes`` names the order's route (e.g. IV ofatumumab and a
        subcutaneous order: the MS pen) is not that drug.
        """
        return self._drug_for(_order_key(order))

    def _drug_for(self, key: tuple[Any, ...]) -> Match | None:
        """``match_order`` for an ``_order_key``: from the memo when the key fits it."""
        return self._order_memo(key) if _fits_memo(key) else self._match_order_key(key)

    def _match_order_key(self, key: tuple[Any, ...]) -> Match | None:
        codings, ingredient_codings, raw_texts, route = key
        texts = _normalised(raw_texts)
        codes = self._code_matches("drug", codings, ingredient_codings, texts)
        if codes:
            match: Match | None = codes[0]
        else:
            matches = self._matches_in(("drug",), (), (), texts)
            match = matches[0] if matches else None
        if match is None or not route:
            return match
        route_tokens = normalise(route)
        if any(_find(route_tokens, normalise(r)) >= 0 for r in self._routes.get(match.target, ())):
            return None
        return match

    def match_agents(self, order: MedicationOrder) -> tuple[str, ...]:
        """Every agent an order is for (a combination product may hold several)."""
        return self._agents_for(_order_key(order))

    def _agents_for(self, key: tuple[Any, ...]) -> tuple[str, ...]:
        """``match_agents`` for an ``_order_key`` (the route is not read)."""
        return self._agent_memo(key[:3]) if _fits_memo(key) else self._match_agents_key(key[:3])

    def _match_agents_key(self, key: tuple[Any, ...]) -> tuple[str, ...]:
        codings, ingredients, texts = key
        found = self._all_matches(("agent",), codings, ingredients, texts)
        return tuple(m.target for m in found)

    def medicine_kind(
        self,
        codings: tuple[Coding, ...],
        ingredient_codings: tuple[Coding, ...],
        texts: tuple[str, ...],
    ) -> MedicineKind | None:
        """Whether an order for this medication can be for a knowledge-base drug (whatever
        its route), else for a premedication or rescue agent, else neither (None)."""
        key = (codings, ingredient_codings, texts, None)
        if self._drug_for(key) is not None:
            return "drug"
        return "agent" if self._agents_for(key) else None

    def match_allergy(self, allergy: Allergy) -> tuple[Match, ...]:
        """Every drug or class an allergy record names, best first."""
        found = self._all_matches(("drug", "class"), allergy.codings, (), allergy.texts)
        return tuple(found)

    def recognise_order(self, order: MedicationOrder) -> RecognisedOrder | None:
        match = self.match_order(order)
        if match is None:
            return None
        return RecognisedOrder(order=order, drug_id=match.target, matched_by=match.matched_by)

    def recognise_allergy(self, allergy: Allergy) -> tuple[RecognisedAllergy, ...]:
        out: list[RecognisedAllergy] = []
        for m in self.match_allergy(allergy):
            kind: Literal["drug", "class"] = "drug" if m.kind == "drug" else "class"
            out.append(RecognisedAllergy(allergy, kind, m.target, m.matched_by))
        return tuple(out)


class _KbKey:
    """Cache key for a knowledge base: hashed by version, equal only to the same object."""

    __slots__ = ("kb",)

    def __init__(self, kb: KnowledgeBase):
        self.kb = kb

    def __hash__(self) -> int:
        return hash(self.kb.version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _KbKey) and other.kb is self.kb


@lru_cache(maxsize=8)
def _cached_recogniser(key: _KbKey) -> Recogniser:
    return Recogniser(key.kb)


def recogniser_for(kb: KnowledgeBase) -> Recogniser:
    """The ``Recogniser`` of a knowledge base, built on first use and then reused. A site's
    view shares its label knowledge's: an overlay never changes names or codes."""
    return _cached_recogniser(_KbKey(kb.label_knowledge))


def recognise_orders(
    orders: Iterable[MedicationOrder], kb: KnowledgeBase
) -> tuple[RecognisedOrder, ...]:
    """Every order that is a knowledge-base drug, with how it was matched."""
    rec = recogniser_for(kb)
    out = (rec.recognise_order(o) for o in orders if o.codings or o.ingredient_codings or o.texts)
    return tuple(r for r in out if r is not None)


def recognise_agents(
    orders: Iterable[MedicationOrder],
    kb: KnowledgeBase,
    *,
    drugs: Iterable[RecognisedOrder] | None = None,
) -> tuple[tuple[MedicationOrder, str], ...]:
    """(order, agent id) for every premedication or rescue agent ordered.

    An order recognised as a knowledge-base drug is never an agent; an order for a
    combination product yields one pair per agent it contains. ``drugs``, when given, is
    ``recognise_orders`` of these same orders: it says which are drugs without recognising
    them a second time.
    """
    rec = recogniser_for(kb)
    known = None if drugs is None else {id(r.order) for r in drugs}
    out: list[tuple[MedicationOrder, str]] = []
    for order in orders:
        if not (order.codings or order.ingredient_codings or order.texts):
            continue
        is_drug = rec.match_order(order) is not None if known is None else id(order) in known
        if is_drug:
            continue
        out.extend((order, agent_id) for agent_id in rec.match_agents(order))
    return tuple(out)


def recognise_allergies(
    allergies: Iterable[Allergy], kb: KnowledgeBase
) -> tuple[RecognisedAllergy, ...]:
    """Every allergy record that names a knowledge-base drug or drug class.

    A record naming several substances yields one entry per drug or class. Records with
    neither code nor text are skipped; clinical and verification status are not looked at.
    """
    rec = recogniser_for(kb)
    out: list[RecognisedAllergy] = []
    for allergy in allergies:
        if allergy.codings or allergy.texts:
            out.extend(rec.recognise_allergy(allergy))
    return tuple(out)


def ambiguous_names(kb: KnowledgeBase) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Names (normalised) that more than one drug, agent or class claims, with the claimants.

    Such a name makes text recognition depend on tie-breaking; the knowledge should give
    each name to one target (and use ``exclude_terms`` for look-alikes).
    """
    rec = recogniser_for(kb)
    claims: dict[str, set[str]] = {}
    for kind, phrases in rec._phrases.items():
        for p in phrases:
            claims.setdefault(" ".join(p.tokens), set()).add(f"{kind}:{p.target}")
    return tuple(
        (name, tuple(sorted(owners))) for name, owners in sorted(claims.items()) if len(owners) > 1
    )
