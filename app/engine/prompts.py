"""What the text tower is asked: labels and prompt templates, and the ONE validator of both (classify's
ad-hoc labels, label-set create, add-classes and import use it, with the same limits and error codes).

A template is text with exactly one ``{}`` slot for the label and no other brace. It is parsed by hand and
rendered by splicing, never with ``str.format`` on user text (a format spec such as ``{0:x>20000000}``
would allocate on demand, ``{0.__class__}`` would reach attributes).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from app.errors import InvalidInput, shown

SLOT = "{}"
MAX_TEMPLATES = 32
MAX_TEMPLATE_LENGTH = 300


class TemplateError(ValueError):
    """A template that is not text with exactly one ``{}`` slot."""


def split_template(template: str) -> tuple[str, str]:
    """``(prefix, suffix)`` around the one ``{}`` slot; ``TemplateError`` for anything else: no slot, two
    slots, a lone or escaped brace (``{{``, ``}}``), a named or numbered field or a format spec."""
    slot = template.find(SLOT)
    if slot < 0:
        raise TemplateError("needs one '{}' slot for the label")
    prefix, suffix = template[:slot], template[slot + len(SLOT) :]
    if any(brace in part for part in (prefix, suffix) for brace in "{}"):
        raise TemplateError("may hold exactly one '{}' slot and no other '{' or '}'")
    return prefix, suffix


def render_prompt(template: str, label: str) -> str:
    """The prompt for ``label`` (the template must pass ``split_template``)."""
    prefix, suffix = split_template(template)
    return f"{prefix}{label}{suffix}"


def has_control_characters(text: str) -> bool:
    """True when ``text`` holds control, format, surrogate, private-use or unassigned characters."""
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"} for ch in text)


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
    """Labels stripped of surrounding blanks; ``InvalidInput`` for a wrong type or count, or any label
    that is empty, over-long, holds control or invisible characters, cannot be a URL path segment, or
    repeats another up to case."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InvalidInput(f"{field} must be a list of strings", code="invalid_labels")
    if len(labels) < min_count:
        raise InvalidInput(
            f"{field} needs at least {min_count} label{'s' * (min_count != 1)}", code="invalid_labels"
        )
    if len(labels) > max_count:
        raise InvalidInput(
            f"{field} has {len(labels)} labels; the limit is {max_count}", code="too_many_labels"
        )
    cleaned: list[str] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(labels):
        label = raw.strip()
        if not label:
            raise InvalidInput(f"{field}[{i}] is empty or blank", code="invalid_labels")
        if len(label) > max_length:
            raise InvalidInput(
                f"{field}[{i}] has {len(label)} characters; the limit is {max_length}", code="label_too_long"
            )
        if has_control_characters(label):
            raise InvalidInput(
                f"{field}[{i}] contains control or invisible characters", code="invalid_labels"
            )
        if is_path_hostile(label):
            raise InvalidInput(
                f"{field}[{i}] {shown(label)} cannot name a class in a URL: no '/' or '\\', not only dots",
                code="invalid_labels",
            )
        key = label.casefold()
        if key in seen:
            raise InvalidInput(
                f"{field}[{i}] {shown(label)} duplicates {field}[{seen[key]}] (up to case)",
                code="duplicate_labels",
            )
        seen[key] = i
        cleaned.append(label)
    return cleaned


def validate_templates(templates: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Templates (``default`` when None): 1..32 strings of at most 300 characters without control
    characters, each with exactly one ``{}`` slot and no other brace."""
    if templates is None:
        return list(default)
    if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
        raise InvalidInput("templates must be a non-empty list of strings", code="invalid_templates")
    if len(templates) > MAX_TEMPLATES:
        raise InvalidInput(f"at most {MAX_TEMPLATES} templates per request", code="invalid_templates")
    for i, t in enumerate(templates):
        if len(t) > MAX_TEMPLATE_LENGTH or has_control_characters(t):
            raise InvalidInput(
                f"templates[{i}] is longer than {MAX_TEMPLATE_LENGTH} or has control characters",
                code="invalid_templates",
            )
        try:
            split_template(t)
        except TemplateError as exc:
            raise InvalidInput(f"templates[{i}] {shown(t)} {exc}", code="invalid_templates") from None
    return list(templates)
