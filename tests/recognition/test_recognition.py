"""Recognition of knowledge-base drugs, agents and classes in FHIR R4 orders and allergies.

Every case is a MedicationRequest or AllergyIntolerance as an EHR sends it (RxNorm, ATC,
SNOMED CT, Tall-Man displays, contained and referenced Medications, brand-only and
free-text orders, biosimilars, and look-alike products that must NOT be recognised as the
IV drug). Each is parsed with ``cds_server.fhirdata.parse`` and recognised against the real
``cards/`` knowledge base. Codes are the ones cited in ``cards/`` (RxNorm, WHO ATC, SNOMED CT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cds_server.fhirdata.parse import (
    ParseLog,
    parse_allergy,
    parse_medication,
    parse_medication_request,
)
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import (
    ATC,
    NDC,
    RXNORM,
    SNOMED,
    Allergy,
    Coding,
    MedicationOrder,
)
from cds_server.recognition import (
    Recogniser,
    ambiguous_names,
    normalise,
    recognise_agents,
    recognise_allergies,
    recognise_orders,
    recogniser_for,
)

CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
ROUTE_IV = {"coding": [{"system": SNOMED, "code": "47625008", "display": "Intravenous route"}]}
ROUTE_SC = {"coding": [{"system": SNOMED, "code": "34206005", "display": "Subcutaneous route"}]}
ROUTE_PO = {"coding": [{"system": SNOMED, "code": "26643006", "display": "Oral route"}]}

Json = dict[str, Any]
Expect = tuple[tuple[str, str], ...]


# ---- FHIR builders (R4 JSON exactly as it goes over the wire) ------------------------------


def rx(code: str, display: str | None = None) -> Json:
    return {"system": RXNORM, "code": code, **({"display": display} if display else {})}


def atc(code: str, display: str | None = None) -> Json:
    return {"system": ATC, "code": code, **({"display": display} if display else {})}


def sct(code: str, display: str) -> Json:
    return {"system": SNOMED, "code": code, "display": display}


def concept(*codings: Json, text: str | None = None) -> Json:
    out: Json = {}
    if codings:
        out["coding"] = list(codings)
    if text:
        out["text"] = text
    return out


def _dosage(route: Json | None, dose: tuple[float, str] | None) -> list[Json]:
    dosage: Json = {"text": "as directed"}
    if route:
        dosage["route"] = route
    if dose:
        dosage["doseAndRate"] = [
            {
                "doseQuantity": {
                    "value": dose[0],
                    "unit": dose[1],
                    "system": "http://unitsofmeasure.org",
                    "code": dose[1],
                }
            }
        ]
    return [dosage]


def order(
    med: Json,
    *,
    route: Json | None = ROUTE_IV,
    dose: tuple[float, str] | None = None,
    contained: list[Json] | None = None,
) -> Json:
    """A draft MedicationRequest; ``med`` is a CodeableConcept or ``{"reference": …}``."""
    res: Json = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2026-11-21T09:00:00Z",
        "dosageInstruction": _dosage(route, dose),
    }
    if contained:
        res["contained"] = contained
    if "reference" in med:
        res["medicationReference"] = med
    else:
        res["medicationCodeableConcept"] = med
    return res


def medication(mid: str, code: Json | None = None, *ingredients: Json) -> Json:
    """A Medication (contained or standalone) with ``itemCodeableConcept`` ingredients."""
    res: Json = {"resourceType": "Medication", "id": mid}
    if code:
        res["code"] = code
    if ingredients:
        res["ingredient"] = [{"itemCodeableConcept": ing, "isActive": True} for ing in ingredients]
    return res


def allergy(code: Json | None = None, *, substance: Json | None = None) -> Json:
    res: Json = {
        "resourceType": "AllergyIntolerance",
        "id": "allergy-1",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "type": "allergy",
        "category": ["medication"],
        "criticality": "high",
        "patient": {"reference": "Patient/p1"},
        "recordedDate": "2025-03-02",
    }
    if code is not None:
        res["code"] = code
    reaction: Json = {
        "manifestation": [concept(sct("39579001", "Anaphylaxis (disorder)"))],
        "severity": "severe",
    }
    if substance is not None:
        reaction["substance"] = substance
    res["reaction"] = [reaction]
    return res


# ---- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    resource: Json
    expect: Expect
    how: str | None = None
    medications: tuple[Json, ...] = field(default=())


def drug(drug_id: str) -> Expect:
    return (("drug", drug_id),)


def agent(agent_id: str) -> Expect:
    return (("agent", agent_id),)


def cls(class_id: str) -> Expect:
    return (("class", class_id),)


NOTHING: Expect = ()

# Standalone Medications that MedicationRequests reference (resolved by the FHIR layer).
MED_TRUXIMA = medication(
    "med-truxima",
    concept(rx("2105835", "50 ML rituximab-abbs 10 MG/ML Injection [Truxima]")),
    concept(rx("2105824", "rituximab-abbs")),
    concept(text="sodium chloride 0.9 %"),
)
MED_DARA_IV = medication(
    "med-dara",
    concept(rx("1726439", "20 ML daratumumab 20 MG/ML Injection")),
    concept(rx("1721947", "daratumumab")),
)
MED_FASPRO = medication(
    "med-faspro",
    concept(
        rx(
            "2375141",
            "15 ML daratumumab-fihj 120 MG/ML / hyaluronidase-fihj 2000 UNT/ML Injection "
            "[Darzalex Faspro]",
        )
    ),
)
MED_NAB = medication(
    "med-nab",
    concept(text="Paclitaxel protein-bound particles for injectable suspension (albumin-bound)"),
    concept(rx("56946", "paclitaxel")),
)

ORDER_CASES: list[Case] = [
    # --- rituximab IV, biosimilars, and the SC look-alike
    Case(
        "rtx-rxnorm-in-tallman",
        order(concept(rx("121191", "riTUXimab"))),
        drug("rituximab"),
        "rxnorm:121191",
    ),
    Case(
        "rtx-biosimilar-pin",
        order(
            concept(
                rx("2105824", "rituximab-abbs"), text="RITUXIMAB-ABBS (TRUXIMA) 500 MG IN NS 250 ML"
            )
        ),
        drug("rituximab"),
        "rxnorm:2105824",
    ),
    Case(
        "rtx-truxima-sbd-not-in-kb",
        order(concept(rx("2105835", "50 ML rituximab-abbs 10 MG/ML Injection [Truxima]"))),
        drug("rituximab"),
        "biosimilar:rituximab-abbs",
    ),
    Case(
        "rtx-free-text-biosimilar",
        order(concept(text="RITUXIMAB-ABBS (TRUXIMA) 500 MG IN NS 250 ML")),
        drug("rituximab"),
        "biosimilar:rituximab-abbs",
    ),
    Case(
        "rtx-brand-only-ruxience",
        order(concept(text="Ruxience")),
        drug("rituximab"),
        "brand:Ruxience",
    ),
    Case(
        "rtx-riabni-ivpb",
        order(concept(text="riabni 700 mg IVPB")),
        drug("rituximab"),
        "brand:Riabni",
    ),
    Case(
        "rtx-pvvr-pin",
        order(concept(rx("2273510", "rituximab-pvvr"))),
        drug("rituximab"),
        "rxnorm:2273510",
    ),
    Case("rtx-old-atc-only", order(concept(atc("L01XC02"))), drug("rituximab"), "atc:L01XC02"),
    Case(
        "rtx-eu-mabthera-iv",
        order(concept(text="MabThera 100 mg/10 mL concentrate, IV infusion")),
        drug("rituximab"),
    ),
    Case(
        "rtx-contained-medication-ingredients",
        order(
            {"reference": "#rtx-bag", "display": "rituximab infusion"},
            contained=[
                medication(
                    "rtx-bag",
                    concept(rx("1657867", "50 ML rituximab 10 MG/ML Injection")),
                    concept(rx("121191", "riTUXimab")),
                    concept(text="Sodium Chloride 0.9% 250 mL"),
                )
            ],
        ),
        drug("rituximab"),
        "ingredient-rxnorm:121191",
    ),
    Case(
        "rtx-contained-tallman-text-only",
        order(
            {"reference": "#m1"},
            contained=[medication("m1", concept(text="riTUXimab (RITUXAN) 375 mg/m2"))],
        ),
        drug("rituximab"),
    ),
    Case(
        "rtx-referenced-medication",
        order({"reference": "Medication/med-truxima", "display": "Truxima 500 mg"}),
        drug("rituximab"),
        "ingredient-rxnorm:2105824",
        (MED_TRUXIMA,),
    ),
    Case(
        "rtx-hycela-min-code",
        order(
            concept(
                rx("1927884", "hyaluronidase / rituximab"),
                text="Rituxan Hycela 1,400 mg/23,400 units SC",
            ),
            route=ROUTE_SC,
        ),
        drug("rituximab-hyaluronidase"),
    ),
    Case(
        "rtx-sc-with-iv-ingredient-code",
        order(
            concept(
                rx("121191", "rituximab"),
                text="rituximab and hyaluronidase human 1,400 mg/23,400 units SC",
            ),
            route=ROUTE_SC,
        ),
        drug("rituximab-hyaluronidase"),
    ),
    # --- other anti-CD20: obinutuzumab, ofatumumab IV vs Kesimpta SC
    Case(
        "obi-rxnorm",
        order(concept(rx("974779", "obinutuzumab"))),
        drug("obinutuzumab"),
        "rxnorm:974779",
    ),
    Case(
        "obi-sbd-code",
        order(concept(rx("1442698", "Gazyva 1000 MG in 40 ML Injection"))),
        drug("obinutuzumab"),
    ),
    Case(
        "obi-text-c1d1",
        order(concept(text="OBINUTUZUMAB 100 MG IN NS 100 ML (C1D1)")),
        drug("obinutuzumab"),
    ),
    Case(
        "ofa-arzerra-iv",
        order(
            concept(rx("712566", "ofatumumab"), text="ofatumumab (ARZERRA) 2,000 mg in NS 1,000 mL")
        ),
        drug("ofatumumab"),
        "rxnorm:712566",
    ),
    Case(
        "ofa-kesimpta-sc-ms-with-in-code",
        order(
            concept(rx("712566", "ofatumumab"), text="Kesimpta 20 mg/0.4 mL Sensoready pen"),
            route=ROUTE_SC,
            dose=(20, "mg"),
        ),
        NOTHING,
    ),
    Case(
        "ofa-kesimpta-text-only",
        order(concept(text="KESIMPTA (ofatumumab) 20 MG/0.4 ML SC"), route=ROUTE_SC),
        NOTHING,
    ),
    # --- CD20xCD3 and other T-cell engagers
    Case(
        "glofit-brand-dose",
        order(concept(text="Columvi 2.5 mg")),
        drug("glofitamab"),
        "brand:Columvi",
    ),
    Case(
        "glofit-atc",
        order(concept(atc("L01FX28", "glofitamab"))),
        drug("glofitamab"),
        "atc:L01FX28",
    ),
    Case(
        "glofit-product-rxcui", order(concept(rx("2639786"))), drug("glofitamab"), "rxnorm:2639786"
    ),
    Case(
        "glofit-suffixed-text",
        order(concept(text="glofitamab-gxbm 10 mg in 0.9% NaCl 50 mL")),
        drug("glofitamab"),
    ),
    Case(
        "epcor-brand",
        order(concept(text="EPKINLY 0.16 mg SC step-up dose 1"), route=ROUTE_SC),
        drug("epcoritamab"),
    ),
    Case(
        "mosun-text",
        order(concept(text="mosunetuzumab-axgb (LUNSUMIO) 1 mg IV C1D1")),
        drug("mosunetuzumab"),
    ),
    Case(
        "teclis-brand",
        order(concept(text="Tecvayli 0.06 mg/kg SC"), route=ROUTE_SC),
        drug("teclistamab"),
    ),
    Case(
        "blina-rxnorm",
        order(concept(rx("1597258", "blinatumomab"))),
        drug("blinatumomab"),
        "rxnorm:1597258",
    ),
    Case(
        "blina-brand",
        order(concept(text="Blincyto 28 mcg/day continuous infusion")),
        drug("blinatumomab"),
    ),
    Case(
        "tebentafusp-brand",
        order(concept(text="KIMMTRAK (tebentafusp-tebn) 20 mcg")),
        drug("tebentafusp"),
    ),
    # --- CAR-T
    Case(
        "cart-kymriah",
        order(concept(text="tisagenlecleucel (KYMRIAH) suspension for IV infusion")),
        drug("tisagenlecleucel"),
    ),
    Case("cart-yescarta", order(concept(text="Yescarta")), drug("axicabtagene-ciloleucel")),
    Case(
        "cart-tecartus-product-rxcui",
        order(concept(rx("2387347"), text="Tecartus")),
        drug("brexucabtagene-autoleucel"),
        "rxnorm:2387347",
    ),
    Case(
        "cart-carvykti-text",
        order(concept(text="ciltacabtagene autoleucel (CARVYKTI) 0.75 x10^6 CAR+ T cells/kg")),
        drug("ciltacabtagene-autoleucel"),
    ),
    Case("cart-abecma-atc", order(concept(atc("L01XL07"))), drug("idecabtagene-vicleucel")),
    Case(
        "cart-breyanzi", order(concept(text="BREYANZI infusion")), drug("lisocabtagene-maraleucel")
    ),
    Case(
        "cart-obe-cel",
        order(concept(text="obe-cel (AUCATZYL) split dose")),
        drug("obecabtagene-autoleucel"),
    ),
    Case("elran-rxnorm", order(concept(rx("2644880"))), drug("elranatamab"), "rxnorm:2644880"),
    Case(
        "talq-brand-sc",
        order(concept(text="Talvey 0.01 mg/kg SC"), route=ROUTE_SC),
        drug("talquetamab"),
    ),
    Case(
        "tarla-suffixed",
        order(concept(text="tarlatamab-dlle (IMDELLTRA) 1 mg")),
        drug("tarlatamab"),
    ),
    Case("linvo-brand", order(concept(text="Lynozyfic 5 mg IV step-up")), drug("linvoseltamab")),
    Case("odro-brand", order(concept(text="Ordspono 0.7 mg")), drug("odronextamab")),
    # --- taxanes: solvent-based paclitaxel vs nab-paclitaxel
    Case(
        "ptx-rxnorm", order(concept(rx("56946", "paclitaxel"))), drug("paclitaxel"), "rxnorm:56946"
    ),
    Case(
        "ptx-text-brand",
        order(concept(text="paclitaxel (TAXOL) 175 mg/m2")),
        drug("paclitaxel"),
        "text:paclitaxel",
    ),
    Case(
        "ptx-tallman-weekly",
        order(concept(text="PACLItaxel 80 mg/m2 in NS 250 mL weekly")),
        drug("paclitaxel"),
    ),
    Case("ptx-openfda-scd", order(concept(rx("312199"))), drug("paclitaxel"), "rxnorm:312199"),
    Case("nab-text", order(concept(text="nab-paclitaxel 125 mg/m2")), drug("nab-paclitaxel")),
    Case(
        "nab-label-name",
        order(concept(text="Paclitaxel protein-bound particles (albumin-bound)")),
        drug("nab-paclitaxel"),
    ),
    Case(
        "nab-brand",
        order(concept(text="ABRAXANE 100 mg vial")),
        drug("nab-paclitaxel"),
        "brand:Abraxane",
    ),
    Case(
        "nab-with-paclitaxel-in-code",
        order(
            concept(rx("56946", "paclitaxel"), text="paclitaxel protein-bound (ABRAXANE) 260 mg/m2")
        ),
        drug("nab-paclitaxel"),
    ),
    Case(
        "nab-referenced-with-paclitaxel-ingredient",
        order({"reference": "Medication/med-nab"}),
        drug("nab-paclitaxel"),
        None,
        (MED_NAB,),
    ),
    Case(
        "doce-tallman-brand",
        order(concept(text="DOCEtaxel (TAXOTERE) 75 mg/m2")),
        drug("docetaxel"),
    ),
    Case("doce-rxnorm", order(concept(rx("72962"))), drug("docetaxel"), "rxnorm:72962"),
    Case(
        "caba-brand",
        order(concept(text="Jevtana 20 mg/m2 in 250 mL NS")),
        drug("cabazitaxel"),
        "brand:Jevtana",
    ),
    # --- platinums and etoposide
    Case(
        "carbo-rxnorm-tallman",
        order(concept(rx("40048", "CARBOplatin"))),
        drug("carboplatin"),
        "rxnorm:40048",
    ),
    Case(
        "carbo-scd",
        order(concept(rx("597195", "carboplatin 10 MG/ML Injectable Solution"))),
        drug("carboplatin"),
    ),
    Case(
        "carbo-auc-text",
        order(concept(text="CARBOplatin AUC 5 (450 mg) in D5W 250 mL")),
        drug("carboplatin"),
    ),
    Case("cis-rxnorm", order(concept(rx("2555", "CISplatin"))), drug("cisplatin"), "rxnorm:2555"),
    Case(
        "oxali-text",
        order(concept(text="OXALIplatin (ELOXATIN) 85 mg/m2 in D5W 500 mL")),
        drug("oxaliplatin"),
    ),
    Case(
        "oxali-atc",
        order(concept(atc("L01XA03", "oxaliplatin"))),
        drug("oxaliplatin"),
        "atc:L01XA03",
    ),
    Case("etopo-rxnorm", order(concept(rx("4179", "etoposide"))), drug("etoposide"), "rxnorm:4179"),
    # --- anti-CD38: daratumumab IV vs Darzalex Faspro SC
    Case(
        "dara-rxnorm",
        order(concept(rx("1721947", "daratumumab"))),
        drug("daratumumab"),
        "rxnorm:1721947",
    ),
    Case(
        "dara-referenced-scd",
        order({"reference": "Medication/med-dara"}),
        drug("daratumumab"),
        None,
        (MED_DARA_IV,),
    ),
    Case("dara-brand-iv", order(concept(text="Darzalex 16 mg/kg IV")), drug("daratumumab")),
    Case(
        "dara-faspro-referenced",
        order({"reference": "Medication/med-faspro"}, route=ROUTE_SC),
        drug("daratumumab-hyaluronidase"),
        None,
        (MED_FASPRO,),
    ),
    Case(
        "dara-faspro-text",
        order(
            concept(
                text="daratumumab and hyaluronidase-fihj (DARZALEX FASPRO) 1,800 mg/30,000 units SC"
            ),
            route=ROUTE_SC,
        ),
        drug("daratumumab-hyaluronidase"),
    ),
    Case(
        "isatux-brand",
        order(concept(text="isatuximab-irfc (SARCLISA) 10 mg/kg")),
        drug("isatuximab"),
    ),
    # --- EGFR / HER2
    Case(
        "cetux-rxnorm",
        order(concept(rx("318341", "cetuximab"))),
        drug("cetuximab"),
        "rxnorm:318341",
    ),
    Case(
        "cetux-brand",
        order(concept(text="Erbitux 400 mg/m2 loading dose")),
        drug("cetuximab"),
        "brand:Erbitux",
    ),
    Case("panit-brand", order(concept(text="Vectibix 6 mg/kg")), drug("panitumumab")),
    Case(
        "amivan-suffix",
        order(concept(text="amivantamab-vmjw (RYBREVANT) 1,050 mg split dose")),
        drug("amivantamab"),
    ),
    Case(
        "trast-rxnorm",
        order(concept(rx("224905", "trastuzumab"))),
        drug("trastuzumab"),
        "rxnorm:224905",
    ),
    Case(
        "trast-biosimilar",
        order(concept(text="trastuzumab-dkst (OGIVRI) 8 mg/kg")),
        drug("trastuzumab"),
    ),
    Case(
        "trast-herceptin",
        order(concept(text="Herceptin 6 mg/kg")),
        drug("trastuzumab"),
        "brand:Herceptin",
    ),
    Case(
        "trast-hylecta-sc",
        order(
            concept(text="trastuzumab and hyaluronidase-oysk (HERCEPTIN HYLECTA) 600 mg SC"),
            route=ROUTE_SC,
        ),
        drug("trastuzumab-hyaluronidase"),
    ),
    Case(
        "trast-hylecta-with-iv-code",
        order(
            concept(rx("224905", "trastuzumab"), text="Herceptin Hylecta 600 mg/10,000 units"),
            route=ROUTE_SC,
        ),
        drug("trastuzumab-hyaluronidase"),
    ),
    Case(
        "trast-deruxtecan-not-trastuzumab",
        order(concept(text="fam-trastuzumab deruxtecan-nxki (ENHERTU) 5.4 mg/kg")),
        NOTHING,
    ),
    Case(
        "trast-emtansine-not-trastuzumab",
        order(concept(text="ado-trastuzumab emtansine (KADCYLA) 3.6 mg/kg")),
        NOTHING,
    ),
    Case(
        "pertuz-brand",
        order(concept(text="Perjeta 840 mg loading dose")),
        drug("pertuzumab"),
        "brand:Perjeta",
    ),
    Case(
        "pertuz-phesgo-not-pertuzumab",
        order(
            concept(
                text="pertuzumab, trastuzumab, and hyaluronidase-zzxf (PHESGO) "
                "1,200 mg/600 mg/30,000 units SC"
            ),
            route=ROUTE_SC,
        ),
        NOTHING,
    ),
    # --- other infusion biologics
    Case("alemtuz-brand", order(concept(text="Campath 30 mg IV")), drug("alemtuzumab")),
    Case(
        "inflix-rxnorm",
        order(concept(rx("191831", "infliximab"))),
        drug("infliximab"),
        "rxnorm:191831",
    ),
    Case(
        "inflix-biosimilar-pin",
        order(concept(rx("1927283", "infliximab-abda"))),
        drug("infliximab"),
    ),
    Case(
        "inflix-inflectra",
        order(concept(text="inFLIXimab-dyyb (INFLECTRA) 5 mg/kg")),
        drug("infliximab"),
    ),
    Case("pegasp-brand", order(concept(text="Oncaspar 2,500 units/m2 IV")), drug("pegaspargase")),
    Case("elotuz-brand", order(concept(text="Empliciti 10 mg/kg")), drug("elotuzumab")),
    Case(
        "bev-biosimilar",
        order(concept(text="bevacizumab-awwb (MVASI) 5 mg/kg")),
        drug("bevacizumab"),
    ),
    Case("ramuc-brand", order(concept(text="Cyramza 8 mg/kg")), drug("ramucirumab")),
    Case(
        "alemtuz-lemtrada",
        order(concept(text="Lemtrada 12 mg in NS 100 mL over 4 h")),
        drug("alemtuzumab"),
    ),
    Case(
        "inflix-zymfentra-sc-not-iv",
        order(concept(text="infliximab-dyyb (ZYMFENTRA) 120 mg SC pen"), route=ROUTE_SC),
        NOTHING,
    ),
    Case(
        "asp-rylaze-im",
        order(
            concept(text="asparaginase erwinia chrysanthemi (recombinant)-rywn (RYLAZE) 25 mg/m2"),
            route={"text": "intramuscular"},
        ),
        drug("asparaginase-erwinia"),
    ),
    Case(
        "asp-calaspargase-not-pegaspargase",
        order(concept(text="calaspargase pegol-mknl (ASPARLAS) 2,500 units/m2")),
        NOTHING,
    ),
    Case(
        "atg-thymoglobulin",
        order(concept(text="anti-thymocyte globulin (rabbit) (THYMOGLOBULIN) 1.5 mg/kg")),
        drug("atg-rabbit"),
    ),
    Case(
        "atg-atgam-sbd",
        order(
            concept(
                rx(
                    "206289",
                    "5 ML lymphocyte immune globulin, anti-thymocyte globulin, equine "
                    "50 MG/ML Injection [ATGAM]",
                )
            )
        ),
        drug("atg-equine"),
        "rxnorm:206289",
    ),
    Case(
        "atg-species-unknown",
        order(concept(rx("1011", "lymphocyte immune globulin, anti-thymocyte globulin"))),
        NOTHING,
    ),
    Case(
        "etopo-phosphate-with-etoposide-code",
        order(concept(rx("4179", "etoposide"), text="etoposide phosphate (ETOPOPHOS) 100 mg/m2")),
        drug("etoposide-phosphate"),
    ),
    # --- unrelated orders: nothing
    Case(
        "none-ondansetron",
        order(concept(rx("26225", "Ondansetron"), text="ondansetron 8 mg IV")),
        NOTHING,
    ),
    Case("none-pembrolizumab", order(concept(text="pembrolizumab (KEYTRUDA) 200 mg IV")), NOTHING),
    Case(
        "none-normal-saline", order(concept(text="Sodium chloride 0.9% 250 mL IV bolus")), NOTHING
    ),
    # --- premedication agents: agents, never drugs
    Case(
        "agent-diphenhydramine-rxnorm",
        order(concept(rx("3498", "diphenhydrAMINE"))),
        agent("diphenhydramine"),
    ),
    Case(
        "agent-famotidine-brand", order(concept(text="Pepcid 20 mg IV push")), agent("famotidine")
    ),
    Case(
        "agent-dexamethasone-atc",
        order(concept(atc("H02AB02", "dexamethasone"))),
        agent("dexamethasone"),
    ),
    Case(
        "agent-acetaminophen-po",
        order(concept(text="Tylenol 650 mg tablet"), route=ROUTE_PO),
        agent("acetaminophen"),
    ),
    Case(
        "agent-methylpred-sbd",
        order(concept(rx("1743707", "Solu-Medrol 125 MG Injection"))),
        agent("methylprednisolone"),
    ),
    Case(
        "agent-tocilizumab",
        order(concept(text="tocilizumab (ACTEMRA) 8 mg/kg IV for CRS")),
        agent("tocilizumab"),
    ),
    Case("agent-cetirizine-rxnorm", order(concept(rx("20610", "cetirizine"))), agent("cetirizine")),
]

ALLERGY_CASES: list[Case] = [
    Case(
        "alg-carboplatin-snomed-finding",
        allergy(concept(sct("293779007", "Allergy to carboplatin (finding)"))),
        drug("carboplatin"),
        "snomed:293779007",
    ),
    Case(
        "alg-carboplatin-rxnorm",
        allergy(concept(rx("40048", "carboplatin"))),
        drug("carboplatin"),
        "rxnorm:40048",
    ),
    Case(
        "alg-carboplatin-text",
        allergy(concept(text="carboplatin")),
        drug("carboplatin"),
        "text:carboplatin",
    ),
    Case(
        "alg-paclitaxel-substance",
        allergy(concept(sct("387374002", "Paclitaxel (substance)"))),
        drug("paclitaxel"),
    ),
    Case(
        "alg-oxaliplatin-reaction-substance",
        allergy(
            concept(text="Chemotherapy"),
            substance=concept(sct("395814003", "Oxaliplatin (substance)")),
        ),
        drug("oxaliplatin"),
    ),
    Case("alg-class-platinum", allergy(concept(text="Platinum compounds")), cls("platinum")),
    Case("alg-class-taxanes", allergy(concept(text="Taxanes")), cls("taxane")),
    Case(
        "alg-class-anti-cd20",
        allergy(concept(text="anti-CD20 monoclonal antibody")),
        cls("anti-cd20"),
    ),
    Case(
        "alg-brand-rituxan",
        allergy(concept(text="Rituxan (rituximab) - infusion reaction")),
        drug("rituximab"),
    ),
    Case("alg-biosimilar-truxima", allergy(concept(text="TRUXIMA")), drug("rituximab")),
    Case("alg-abraxane", allergy(concept(text="Abraxane")), drug("nab-paclitaxel")),
    Case(
        "alg-two-substances",
        allergy(concept(text="carboplatin; paclitaxel")),
        (("drug", "carboplatin"), ("drug", "paclitaxel")),
    ),
    Case(
        "alg-class-atg",
        allergy(concept(text="Antithymocyte globulin")),
        cls("anti-thymocyte-globulin"),
    ),
    Case("alg-thymoglobulin-drug", allergy(concept(text="Thymoglobulin")), drug("atg-rabbit")),
    Case(
        "alg-class-bispecific",
        allergy(concept(text="Bispecific T-cell engager (CRS)")),
        cls("cd3-bispecific"),
    ),
    Case(
        "alg-cisplatin-finding",
        allergy(concept(sct("293780005", "Allergy to cisplatin (finding)"))),
        drug("cisplatin"),
        "snomed:293780005",
    ),
    Case(
        "alg-docetaxel-substance",
        allergy(concept(sct("386918005", "Docetaxel (substance)"))),
        drug("docetaxel"),
    ),
    Case(
        "alg-biosimilar-pin-rxnorm",
        allergy(concept(rx("2105824", "rituximab-abbs"))),
        drug("rituximab"),
        "rxnorm:2105824",
    ),
    Case(
        "alg-sc-product-not-iv",
        allergy(concept(text="Rituxan Hycela")),
        drug("rituximab-hyaluronidase"),
    ),
    Case(
        "alg-class-and-member",
        allergy(concept(text="Taxanes (paclitaxel)")),
        (("drug", "paclitaxel"), ("class", "taxane")),
    ),
    Case("alg-class-anti-tnf", allergy(concept(text="Anti-TNF agent")), cls("anti-tnf")),
    Case("alg-class-car-t", allergy(concept(text="CAR-T cell therapy")), cls("car-t")),
    Case(
        "alg-class-anti-cd38",
        allergy(concept(text="anti-CD38 monoclonal antibodies")),
        cls("anti-cd38"),
    ),
    Case("alg-class-l-asparaginase", allergy(concept(text="L-asparaginase")), cls("asparaginase")),
    Case(
        "alg-infliximab-brand", allergy(concept(text="Infliximab (Remicade)")), drug("infliximab")
    ),
    Case("alg-insect-bite-not-bite-class", allergy(concept(text="Insect bite")), NOTHING),
    Case("alg-penicillin", allergy(concept(text="Penicillins")), NOTHING),
    Case(
        "alg-diphenhydramine-agent",
        allergy(concept(sct("294133003", "Allergy to diphenhydramine (finding)"))),
        NOTHING,
    ),
    Case("alg-nkda", allergy(concept(sct("409137002", "No known drug allergy"))), NOTHING),
]

CASES = ORDER_CASES + ALLERGY_CASES


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_knowledge()


def _recognise(case: Case, kb: KnowledgeBase) -> list[tuple[str, str, str | None]]:
    log = ParseLog()
    if case.resource["resourceType"] == "MedicationRequest":
        meds = {}
        for m in case.medications:
            parsed = parse_medication(m, m["id"], log)
            assert parsed is not None, log.warnings
            meds[f"Medication/{m['id']}"] = parsed
        order_ = parse_medication_request(case.resource, case.id, log, meds, is_draft=True)
        assert order_ is not None, log.warnings
        assert not log.warnings
        got: list[tuple[str, str, str | None]] = [
            ("drug", r.drug_id, r.matched_by) for r in recognise_orders([order_], kb)
        ]
        got += [("agent", agent_id, None) for _, agent_id in recognise_agents([order_], kb)]
        return got
    allergy_ = parse_allergy(case.resource, case.id, log)
    assert allergy_ is not None, log.warnings
    return [(r.target_kind, r.target_id, r.matched_by) for r in recognise_allergies([allergy_], kb)]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_recognition_table(case: Case, kb: KnowledgeBase) -> None:
    got = _recognise(case, kb)
    assert [(kind, target) for kind, target, _ in got] == list(case.expect)
    if case.how is not None:
        assert got[0][2] == case.how


# ---- behaviour that is not a table row ----------------------------------------------------


def _order(
    *texts: str, codings: tuple[Coding, ...] = (), ingredients: tuple[Coding, ...] = ()
) -> MedicationOrder:
    return MedicationOrder(
        ref="MedicationRequest/x",
        status="draft",
        intent="order",
        codings=codings,
        ingredient_codings=ingredients,
        texts=texts,
    )


def test_order_without_medication_is_not_recognised(kb: KnowledgeBase) -> None:
    assert recognise_orders([_order()], kb) == ()
    assert recognise_agents([_order()], kb) == ()


def test_allergy_without_code_or_text_is_skipped(kb: KnowledgeBase) -> None:
    empty = Allergy(
        ref="AllergyIntolerance/a",
        clinical_status="active",
        verification_status=None,
        criticality=None,
    )
    assert recognise_allergies([empty], kb) == ()


def test_status_is_not_filtered(kb: KnowledgeBase) -> None:
    refuted = Allergy(
        ref="AllergyIntolerance/a",
        clinical_status="inactive",
        verification_status="refuted",
        criticality=None,
        texts=("carboplatin",),
    )
    stopped = MedicationOrder(ref=None, status="stopped", intent="order", texts=("rituximab",))
    assert [r.target_id for r in recognise_allergies([refuted], kb)] == ["carboplatin"]
    assert [r.drug_id for r in recognise_orders([stopped], kb)] == ["rituximab"]


def test_code_systems_are_compared_by_uri(kb: KnowledgeBase) -> None:
    wrong_system = Coding("http://snomed.info/sct", "121191", "riTUXimab")
    (rec,) = recognise_orders([_order("riTUXimab", codings=(wrong_system,))], kb)
    assert rec.matched_by == "text:rituximab"  # found by the display, not by the code
    assert recognise_orders([_order(codings=(Coding(RXNORM, "121191 "),))], kb) == ()


def test_order_codes_win_over_ingredient_codes_and_rxnorm_over_atc(kb: KnowledgeBase) -> None:
    order_ = _order(
        codings=(Coding(ATC, "L01FA01"), Coding(RXNORM, "121191")),
        ingredients=(Coding(RXNORM, "2105824"),),
    )
    (rec,) = recognise_orders([order_], kb)
    assert rec.matched_by == "rxnorm:121191"


def test_words_match_only_on_boundaries(kb: KnowledgeBase) -> None:
    assert recognise_orders([_order("xrituximab"), _order("rituximabs")], kb) == ()


def test_unknown_suffixed_biosimilar_maps_to_ingredient(kb: KnowledgeBase) -> None:
    (rec,) = recognise_orders([_order("RITUXIMAB-ZZZZ 500 MG")], kb)
    assert (rec.drug_id, rec.matched_by) == ("rituximab", "text:rituximab")


def test_drug_order_is_never_an_agent(kb: KnowledgeBase) -> None:
    mixed = _order("rituximab in NS; premedicate with diphenhydramine")
    assert [r.drug_id for r in recognise_orders([mixed], kb)] == ["rituximab"]
    assert recognise_agents([mixed], kb) == ()


def test_combination_agent_order_yields_each_agent(kb: KnowledgeBase) -> None:
    combo = _order("acetaminophen 650 mg / diphenhydramine 25 mg")
    assert sorted(a for _, a in recognise_agents([combo], kb)) == [
        "acetaminophen",
        "diphenhydramine",
    ]


def test_recogniser_is_built_once_per_knowledge_base(kb: KnowledgeBase) -> None:
    assert recogniser_for(kb) is recogniser_for(kb)
    assert isinstance(recogniser_for(kb), Recogniser)


def test_normalise() -> None:
    assert normalise("riTUXimab-ABBS (Truxima®)") == ("rituximab", "abbs", "truxima")
    assert normalise("rituximab/hyaluronidase") == normalise("rituximab and hyaluronidase")


def test_no_name_is_claimed_by_two_targets(kb: KnowledgeBase) -> None:
    assert ambiguous_names(kb) == ()


def test_every_brand_and_biosimilar_of_the_real_base_is_recognised(kb: KnowledgeBase) -> None:
    """Each drug's own names, brands and biosimilar names resolve to that drug."""
    misses = []
    for d in kb.drugs.values():
        ident = d.identity
        names = [*ident.names, *ident.brands]
        for bio_name, bio_brand in ident.biosimilars:
            names.append(bio_name)
            if bio_brand:
                names.append(bio_brand)
        for name in names:
            got = [r.drug_id for r in recognise_orders([_order(f"{name} 100 mg IV")], kb)]
            if got != [d.id]:
                misses.append((d.id, name, got))
    assert misses == []


def test_every_drug_code_of_the_real_base_is_recognised(kb: KnowledgeBase) -> None:
    misses = []
    for d in kb.drugs.values():
        for entry in d.identity.codes:
            got = [r.drug_id for r in recognise_orders([_order(codings=(entry.coding,))], kb)]
            if got != [d.id]:
                misses.append((d.id, entry.coding.code, got))
    assert misses == []


def _kb_ndcs() -> list[tuple[str, str]]:
    kb = load_knowledge()
    return [
        (d.id, e.coding.code or "")
        for d in kb.drugs.values()
        for e in d.identity.codes
        if e.coding.system == NDC
    ]


@pytest.mark.parametrize(("drug_id", "product"), _kb_ndcs())
def test_every_knowledge_ndc_is_recognised_from_the_11_digit_package_form_epic_sends(
    kb, drug_id: str, product: str
) -> None:
    """Epic sends 11-digit NDCs without hyphens: the 5-4-2 package form of each product NDC."""
    labeler, item = product.split("-")
    eleven = f"{labeler.zfill(5)}{item.zfill(4)}01"
    draft = MedicationOrder(
        ref="MedicationRequest/n",
        status="draft",
        intent="order",
        codings=(Coding(NDC, eleven),),
        is_draft=True,
    )
    [found] = recognise_orders((draft,), kb)
    assert found.drug_id == drug_id
