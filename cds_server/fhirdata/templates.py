"""Prefetch template tokens (CDS Hooks 2.0 §prefetch-tokens): find, check and substitute them.

2.0 allows only two token forms: ``{{context.<field>}}`` naming a root-level primitive
context field, and the four user tokens derived from ``context.userId``. Anything else —
FHIRPath (``{{context.draftOrders…}}``), ``{{today()}}``, typos — is rejected loudly.
Substituted values are percent-encoded so a value can never add query parameters.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

from cds_server.cdshooks.errors import TemplateError

TOKEN = re.compile(r"\{\{(.*?)\}\}")
CONTEXT_TOKEN = re.compile(r"^context\.([A-Za-z][A-Za-z0-9]*)$")
USER_TOKENS: Mapping[str, str] = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def tokens(template: str) -> list[str]:
    """The tokens of a template, stripped of braces and surrounding spaces, in order."""
    return [t.strip() for t in TOKEN.findall(template)]


def problems(template: str, context_fields: Collection[str]) -> list[str]:
    """Why a template is not a valid 2.0 template for a hook with these token-eligible fields."""
    out = []
    if template.count("{{") != template.count("}}"):
        out.append("unbalanced token braces")
    for token in tokens(template):
        match = CONTEXT_TOKEN.match(token)
        if match:
            if match.group(1) not in context_fields:
                out.append(f"'{token}' is not a root-level primitive field of this hook")
        elif token not in USER_TOKENS:
            out.append(f"'{token}' is not a CDS Hooks 2.0 prefetch token")
    return out


def _user_token(name: str, context: Mapping[str, Any]) -> str:
    user = context.get("userId")
    wanted = USER_TOKENS[name]
    if isinstance(user, str) and "/" in user:
        rtype, _, rid = user.rpartition("/")
        if rtype.rsplit("/", 1)[-1] == wanted and rid:
            return rid
    raise TemplateError(f"'{name}' cannot be filled: the user is not a {wanted}")


def render(template: str, context: Mapping[str, Any]) -> str:
    """Substitute every token from ``context``; raise ``TemplateError`` if one cannot be filled."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(1).strip()
        ctx = CONTEXT_TOKEN.match(token)
        if ctx:
            value = context.get(ctx.group(1))
            if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
                raise TemplateError(f"'{token}' has no primitive value in the context")
            return quote(str(value), safe="")
        if token in USER_TOKENS:
            return quote(_user_token(token, context), safe="")
        raise TemplateError(f"'{token}' is not a CDS Hooks 2.0 prefetch token")

    return TOKEN.sub(fill, template)
