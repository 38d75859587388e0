"""Validation of classify inputs shared by the JSON and multipart forms: labels, templates, base64."""

from __future__ import annotations

import base64
import binascii
import string
import unicodedata

from app.api.errors import APIError
from app.config import Settings

MAX_TEMPLATES = 32
MAX_TEMPLATE_LENGTH = 300


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds control, format, surrogate, private-use or unassigned characters."""
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in text)


def validate_labels(labels: list[str], settings: Settings, *, field: str = "labels") -> list[str]:
    """Strip labels and refuse empty, blank, duplicate, over-long, too many or control-character labels."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise APIError(422, "invalid_labels", f"{field} must be a list of strings")
    if len(labels) < 2:
        raise APIError(422, "invalid_labels", f"{field} needs at least 2 labels to choose between")
    if len(labels) > settings.max_labels:
        raise APIError(
            422, "too_many_labels", f"{field} has {len(labels)} labels; the limit is {settings.max_labels}"
        )
    cleaned: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(labels):
        label = raw.strip()
        if not label:
            raise APIError(422, "invalid_labels", f"{field}[{i}] is empty or blank")
        if len(label) > settings.max_label_length:
            raise APIError(
                422,
                "label_too_long",
                f"{field}[{i}] has {len(label)} characters; the limit is {settings.max_label_length}",
            )
        if has_control_characters(label):
            raise APIError(422, "invalid_labels", f"{field}[{i}] contains control or invisible characters")
        key = label.casefold()
        if key in seen:
            raise APIError(422, "duplicate_labels", f"{field}[{i}] {label!r} duplicates {field}[{seen[key]}]")
        seen[key] = i
        cleaned.append(label)
    return cleaned


def validate_templates(templates: list[str] | None, default: list[str]) -> list[str]:
    """Each template has exactly one ``{}`` slot and no other format fields."""
    if templates is None:
        return list(default)
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise APIError(422, "invalid_templates", "templates must be a non-empty list of strings")
    if len(templates) > MAX_TEMPLATES:
        raise APIError(422, "invalid_templates", f"at most {MAX_TEMPLATES} templates per request")
    for i, t in enumerate(templates):
        if len(t) > MAX_TEMPLATE_LENGTH or has_control_characters(t):
            raise APIError(422, "invalid_templates", f"templates[{i}] is too long or has control characters")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError:
            fields = ["?"]
        if fields != [""]:
            raise APIError(
                422,
                "invalid_templates",
                f"templates[{i}] {t!r} needs exactly one '{{}}' label slot and no other braces",
            )
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
