"""The one validator of labels and prompt templates, used by classify (ad-hoc labels), label-set create,
add-classes and import, and strict base64 decoding of JSON images."""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Sequence

from app.api.errors import APIError
from app.engine.prompts import TemplateError, split_template

MAX_TEMPLATES = 32
MAX_TEMPLATE_LENGTH = 300
SHOWN_CHARS = 40  # how much of a bad label or template an error message repeats


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds control, format, surrogate, private-use or unassigned characters."""
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in text)


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` for an error message: repr, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} chars)"


def is_path_hostile(label: str) -> bool:
    """True for a label that cannot be one URL path segment (``DELETE .../classes/{label}``) on every
    proxy and client: it holds ``/`` or ``\\``, or it is only dots (``.``, ``..``)."""
    return "/" in label or "\\" in label or set(label) == {"."}


def validate_labels(
    labels: object,
    *,
    max_count: int,
    max_length: int,
    min_count: int = 2,
    field: str = "labels",
) -> list[str]:
    """Labels stripped of surrounding blanks; 422 for a wrong type or count, or any label that is empty,
    over-long, holds control or invisible characters, cannot be a URL path segment, or repeats another
    up to case."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise APIError(422, "invalid_labels", f"{field} must be a list of strings")
    if len(labels) < min_count:
        raise APIError(
            422, "invalid_labels", f"{field} needs at least {min_count} label{'s' * (min_count != 1)}"
        )
    if len(labels) > max_count:
        raise APIError(422, "too_many_labels", f"{field} has {len(labels)} labels; the limit is {max_count}")
    cleaned: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(labels):
        label = raw.strip()
        if not label:
            raise APIError(422, "invalid_labels", f"{field}[{i}] is empty or blank")
        if len(label) > max_length:
            raise APIError(
                422,
                "label_too_long",
                f"{field}[{i}] has {len(label)} characters; the limit is {max_length}",
            )
        if has_control_characters(label):
            raise APIError(422, "invalid_labels", f"{field}[{i}] contains control or invisible characters")
        if is_path_hostile(label):
            raise APIError(
                422,
                "invalid_labels",
                f"{field}[{i}] {shown(label)} cannot name a class in a URL: no '/' or '\\', not only dots",
            )
        key = label.casefold()
        if key in seen:
            raise APIError(
                422,
                "duplicate_labels",
                f"{field}[{i}] {shown(label)} duplicates {field}[{seen[key]}] (up to case)",
            )
        seen[key] = i
        cleaned.append(label)
    return cleaned


def validate_templates(templates: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Templates (``default`` when None): 1..32 strings of at most 300 characters without control
    characters, each with exactly one ``{}`` slot and no other brace (``app.engine.prompts``)."""
    if templates is None:
        return list(default)
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise APIError(422, "invalid_templates", "templates must be a non-empty list of strings")
    if len(templates) > MAX_TEMPLATES:
        raise APIError(422, "invalid_templates", f"at most {MAX_TEMPLATES} templates per request")
    for i, t in enumerate(templates):
        if len(t) > MAX_TEMPLATE_LENGTH or has_control_characters(t):
            raise APIError(
                422,
                "invalid_templates",
                f"templates[{i}] is longer than {MAX_TEMPLATE_LENGTH} or has control characters",
            )
        try:
            split_template(t)
        except TemplateError as exc:
            raise APIError(422, "invalid_templates", f"templates[{i}] {shown(t)} {exc}") from None
    return list(templates)


def decode_base64_image(data: str, index: int) -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is allowed)."""
    if not isinstance(data, str):
        raise APIError(422, "invalid_base64", f"images[{index}] must be a base64 string")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "invalid_base64", f"images[{index}] is not valid base64") from None
    return raw
